"""The gateway: SQL over HTTP and Postgres over WebSocket, as `@neondatabase/serverless` speaks them.

It runs in the process that is always up (the local operator, the cluster's activator), so a request
to a resting database is held while it wakes, through the activator's own wake path. `request` reads
what a client sent and `results` writes what it gets back (both without I/O); `upstream` runs
queries on a database's Postgres and `pool` keeps those sessions for reuse; `sql` serves `/sql`,
`websocket` relays the wire protocol, and `server` puts both on one port, over TLS. `reach` is how a
request gets to its database; it knows nothing of what wakes one, only `Backend`.
"""
