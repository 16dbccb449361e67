"""A real uvicorn server on loopback for an ASGI app, in a daemon thread (tests and their fixtures)."""

from __future__ import annotations

import threading
import time

import uvicorn

from service.serve import free_port


def serve(app: object) -> tuple[uvicorn.Server, int]:
    """Start ``app``; returns once it accepts connections (the server, its port). Stop it with
    ``server.should_exit = True``."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, port
