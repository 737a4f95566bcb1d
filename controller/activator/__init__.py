"""The activator: holds connections to paused and parked databases, wakes them, then relays bytes.

Without I/O: `protocol` (the startup's wire formats, ErrorResponse) and `negotiation` (one client's
startup as a state machine, bytes in, actions out). With asyncio: `proxy`, which moves bytes and
defines the `Backend` it asks where a database is (`Upstream`) and to wake it, and `relay`, the
splice to Postgres. `limits` bounds what anonymous clients can make it hold; `refusals` keeps their
log lines few. The backends themselves (the local operator in-process, the Kubernetes API from its
own Deployment) live with the processes that assemble them, in `controller.app`.
"""
