"""What both runtimes and the Postgres-statistics source share about talking to Postgres.

`conf` renders a configuration file; `sessions` opens the operator's own sessions (tagged so they
never count as clients, and counted per database); `settings` applies a capacity's reloadable
settings, in one resize order, and leaves the wake's settings in place on a stop; `roles` makes the
roles clients get (desired state and catalog in, SQL out); `activity` is the SQL that says who is a
client; `exporter` is the postgres_exporter sidecar's configuration, made from that same SQL.
"""
