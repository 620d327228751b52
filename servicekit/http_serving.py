"""Serve an ASGI app with uvicorn on a socket the service bound itself (see ``ports.py``).

Binding first lets a service started with ``--port 0`` learn its port before it builds its app
(whose token audience and FHIR base URL contain the port), announce it, and then serve — on one
process or on ``workers`` processes that share the socket.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

__all__ = ["serve_uvicorn"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the app does not start


def serve_uvicorn(sock: socket.socket, target: Any, *, workers: int = 1, **options: Any) -> None:
    """Run uvicorn on ``sock`` (already bound) until SIGTERM/SIGINT; ``options`` are
    ``uvicorn.Config`` keyword arguments."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(target, host=host, port=port, workers=workers, **options)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
