"""Background services that run for as long as the node app runs (MLLP listener, exchange inbox…).

Each entry of ``BACKGROUND`` is a function ``(app) -> AsyncContextManager`` called in the app's
lifespan after the store is open: start your service on enter, stop it gracefully on exit.
The app gives you ``app.state.settings`` (NodeSettings), ``app.state.store`` (FhirStore),
``app.state.engine`` and ``app.state.auth``. Return ``contextlib.nullcontext()`` when your service
is not configured (e.g. no ``mllp_port``). Register with one import and one append.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

__all__ = ["BACKGROUND", "BackgroundService", "run_background"]

BackgroundService = Callable[[Any], AbstractAsyncContextManager[Any]]
BACKGROUND: list[BackgroundService] = []


@asynccontextmanager
async def run_background(app: Any, services: list[BackgroundService]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(service(app))
        yield


from node.exchange.lifecycle import exchange_service  # noqa: E402

BACKGROUND.append(exchange_service)

from node.care.lifecycle import care_service  # noqa: E402

BACKGROUND.append(care_service)
