"""Start the care worker with the node app (registered in node/api/lifecycle.py BACKGROUND): it
runs in the one process that holds the background lock. Off unless ``care_enabled``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from node.care.definitions import load_definitions
from node.care.worker import CareWorker

__all__ = ["care_service"]


@asynccontextmanager
async def _running(app: Any) -> AsyncIterator[None]:
    settings = app.state.settings
    definitions = load_definitions()  # a bad pathway or rule stops start-up, naming file and rule
    worker = CareWorker(
        app.state.store,
        definitions,
        responsible_user=settings.care_responsible_user,
        tick_seconds=settings.care_tick_seconds,
    )
    worker.start()
    app.state.care_worker = worker
    try:
        yield
    finally:
        worker.stop()
        app.state.care_worker = None


def care_service(app: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    if not app.state.settings.care_enabled:
        return contextlib.nullcontext()
    return _running(app)
