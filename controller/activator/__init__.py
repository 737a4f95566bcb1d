"""The activator: holds connections to paused and parked databases, wakes them, then relays bytes.

`protocol` is the sans-I/O part (startup packets, ErrorResponse); `proxy` moves bytes with asyncio.
A backend tells it where a database is and wakes it: the local operator in-process, or the
Kubernetes API (an annotation the operator answers) when it runs as its own Deployment.
"""
