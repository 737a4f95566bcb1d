"""Helpers shared by the tests: the CRD schema as a validator, Postgres processes, and operator runs."""
