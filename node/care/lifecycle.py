"""Care management as a node feature (``CARE``, listed in the composition root ``node/app.py``):
its routes (alerts stream, acknowledge/dismiss, enrolment) and its worker — background work of
exactly one worker process, subscribed to the store's commit events. Off unless
``settings.care.enabled``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from node.care.definitions import load_definitions
from node.care.routes import router
from node.care.worker import CareWorker
from node.feature import BackgroundTask, Feature, NodeServices
from node.settings import NodeSettings

__all__ = ["CARE", "care_service"]


@asynccontextmanager
async def care_service(services: NodeServices, app: Any) -> AsyncIterator[None]:
    care = services.settings.care
    definitions = load_definitions()  # a bad pathway or rule stops start-up, naming file and rule
    worker = CareWorker(
        services.store,
        definitions,
        responsible_user=care.responsible_user,
        tick_seconds=care.tick_seconds,
    )
    worker.start()
    app.state.care_worker = worker
    try:
        yield
    finally:
        worker.stop()
        app.state.care_worker = None


def _enabled(settings: NodeSettings) -> bool:
    return settings.care.enabled


CARE = Feature(
    name="care",
    routers=(router,),
    background=(BackgroundTask("worker", care_service, enabled=_enabled),),
)
