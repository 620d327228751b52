"""Serve an ASGI app with uvicorn on a socket the service bound itself (see ``ports.py``).

Binding first lets a service started with ``--port 0`` learn its port before it builds its app
(whose token audience and FHIR base URL contain the port), announce it, and then serve — on one
process or on ``workers`` processes that share the socket.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from contextlib import suppress
from types import FrameType
from typing import Any

import uvicorn

__all__ = ["QuietServer", "serve_uvicorn"]

STARTUP_FAILURE = 3  # uvicorn's exit status when the app does not start


class QuietServer(uvicorn.Server):
    """uvicorn's server with its housekeeping tick once a second, just after each second
    begins, instead of every 0.1 s. What the tick does is per second anyway (the Date header
    is refreshed on every tick, so it is always the current second's), and a SIGTERM/SIGINT
    wakes the loop at once, so it stops as soon as before; an idle service wakes ten times
    less often."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0 - time.time() % 1.0 + 0.001)
            counter = (counter + 10) % 864000  # uvicorn's whole-second ticks (counter % 10 == 0)
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)


def serve_uvicorn(sock: socket.socket, target: Any, *, workers: int = 1, **options: Any) -> None:
    """Run uvicorn on ``sock`` (already bound) until SIGTERM/SIGINT; ``options`` are
    ``uvicorn.Config`` keyword arguments."""
    from uvicorn.supervisors import Multiprocess

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(target, host=host, port=port, workers=workers, **options)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = QuietServer(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
