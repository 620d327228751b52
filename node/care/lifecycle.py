"""Care management as a node feature (``CARE``, listed in the composition root ``node/app.py``):
its routes (alerts stream, acknowledge/dismiss, enrolment) and its worker — background work of
exactly one worker process, subscribed to the store's commit events. Off unless
``settings.care.enabled``.

By default (``care.worker_process``) the worker runs in a child OS process of that worker
(``node/care/worker_process.py``), restarted if it dies; otherwise as a thread in it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from node.care.definitions import load_definitions
from node.care.routes import router
from node.care.worker import CareWorker
from node.care.worker_process import WorkerProcess, WorkerSpec, offset_clock
from node.feature import BackgroundTask, Feature, NodeServices
from node.settings import NodeSettings

__all__ = ["CARE", "care_service"]

log = logging.getLogger("ipjms.node.care")
RESTART_AFTER_SECONDS = 1.0


async def _supervise(child: WorkerProcess) -> None:
    """Restart the worker process if it dies (it resumes from its stored log position)."""
    while True:
        await asyncio.sleep(RESTART_AFTER_SECONDS)
        if not child.alive():
            log.error("care worker process exited (code %s); restarting", child.exit_code())
            child.start()


@asynccontextmanager
async def care_service(services: NodeServices, app: Any) -> AsyncIterator[None]:
    settings = services.settings
    care = settings.care
    definitions = load_definitions()  # a bad pathway or rule stops start-up, naming file and rule
    if care.clock_offset_seconds:
        log.warning("care clock runs %.0f s ahead of real time (tests and drills only)",
                    care.clock_offset_seconds)  # fmt: skip
    spec = WorkerSpec(
        database_url=settings.database_url,
        base_url=settings.base_url,
        responsible_user=care.responsible_user,
        tick_seconds=care.tick_seconds,
        poll_seconds=care.poll_seconds,
        clock_offset_seconds=care.clock_offset_seconds,
        model_registry_url=care.model_registry_url,
        model_min_auroc=care.model_min_auroc,
        model_min_events=care.model_min_events,
        model_card_ttl_seconds=care.model_card_ttl_seconds,
        credentials_dir=str(settings.credentials_dir),
    )
    worker = CareWorker(
        services.store,
        definitions,
        responsible_user=care.responsible_user,
        tick_seconds=care.tick_seconds,
        clock=offset_clock(care.clock_offset_seconds),
        model_gate=spec.model_gate().verdict,
    )
    child: WorkerProcess | None = None
    unlisten: Callable[[], None] | None = None
    supervisor: asyncio.Task[None] | None = None
    if care.worker_process:
        # this process keeps an unsubscribed CareWorker for POST /care/enrol
        child = WorkerProcess(spec)
        child.start()
        # this process's commits wake the child at once (others': its poll_seconds timer)
        unlisten = services.store.events.on_commit(child.wake)
        supervisor = asyncio.create_task(_supervise(child))
    else:
        worker.start()
    app.state.care_worker = worker
    try:
        yield
    finally:
        app.state.care_worker = None
        if supervisor is not None:
            supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await supervisor
        if unlisten is not None:
            unlisten()
        if child is not None:
            await asyncio.to_thread(child.stop)
        else:
            worker.stop()


def _enabled(settings: NodeSettings) -> bool:
    return settings.care.enabled


CARE = Feature(
    name="care",
    routers=(router,),
    background=(BackgroundTask("worker", care_service, enabled=_enabled),),
)
