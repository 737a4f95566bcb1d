"""Everything that changes the world: where databases are declared (a `Store`), and the runtimes that
run Postgres for them.

`base` holds the interfaces and step errors; `local` runs Postgres processes on this host;
`kubernetes` runs them as StatefulSets. Neither imports the other: what they share is the
`postgres` layer below. `sdb up --runtime` picks one.
"""
