"""The local runtime: Postgres processes on this host, with files as volumes and cgroups as limits."""
