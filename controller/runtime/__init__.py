"""Everything that changes the world: the object store, and the runtimes that run Postgres.

`base` holds the interfaces; `local` runs Postgres processes on this host; `kubernetes` runs them
as StatefulSets; `sql` is the operator's own SQL, shared by both. `sdb up --runtime` picks one.
"""
