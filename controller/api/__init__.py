"""The ServerlessDatabase API: typed spec and status, the object codec, validation, and the CRD file."""
