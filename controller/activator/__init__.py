"""The activator: holds connections to paused and parked databases, wakes them, then relays bytes.

`protocol` (the startup's wire formats, ErrorResponse) and `negotiation` (one client's startup as a
state machine: bytes in, actions out) are the sans-I/O part; `proxy` moves bytes with asyncio
and defines the `Backend` it asks where a database is (`Upstream`) and to wake it. The backends
themselves (the local operator in-process, the Kubernetes API from its own Deployment) live with the
processes that assemble them, in `controller.app`.
"""
