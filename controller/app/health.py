"""Liveness and readiness over HTTP (/healthz, /readyz), on a background thread, for kubelet probes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(
    port: int,
    *,
    ready: Callable[[], bool],
    alive: Callable[[], bool] = lambda: True,
    address: str = "0.0.0.0",
) -> ThreadingHTTPServer:
    """Serve the probes; returns the server (its `server_port` when `port` is 0; `shutdown()` to stop)."""

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            checks = {"/healthz": alive, "/livez": alive, "/readyz": ready}
            check = checks.get(self.path.split("?", 1)[0])
            if check is None:
                self.send_error(404)
                return
            ok = check()
            body = b"ok\n" if ok else b"not ready\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds are not worth a log line."""

    server = ThreadingHTTPServer((address, port), Probe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
