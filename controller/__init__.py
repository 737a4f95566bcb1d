"""Serverless Postgres: an operator that sizes, pauses, parks and wakes ServerlessDatabases.

Layers, from pure to worldly: `api` (types and validation), `policy` (decisions, no I/O),
then the shell: `metrics`, `runtime`, `activator`, the `reconciler` that ties them, and the `cli`.
"""
