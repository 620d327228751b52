"""What a feature offers the node, and the services the node builds once for all of them.

The composition root (``node/app.py``) builds :class:`NodeServices` once per process and lists
its features explicitly. A :class:`Feature` offers:

- ``routers``: mounted once each; every route authorises through ``node.auth.deps``:
  ``require_scope`` (whole-organisation routes; refuses patient-context tokens) or
  ``require_access`` (routes that apply the patient compartment it returns), and
  ``tests/access/access_table.toml`` declares who may call it; routes reach the services through
  the ``Depends(node_services)`` dependency;
- ``migrations``: Alembic folders (each with its own version table; the folder constants and
  their list, ``SCHEMAS``, are in ``node/schemas.py``), run in one place by ``migrate_schemas``
  there at ``ipjms node init``, ``serve`` and the offline commands that open the database (which
  import no feature to do it) — never by the feature at run time;
- ``startup``: hooks run in *every* worker process for as long as the app runs (open what the
  feature's routes need, e.g. the exchange's coordinator channel);
- ``background``: work that must run in *exactly one* worker when ``serve --workers N`` (a
  listener on a fixed port, a queue consumer, a scheduler).

A hook is ``(services, app) -> AsyncContextManager``: start on enter, stop gracefully on exit.
A feature keeps what it builds on ``app.state`` under its own name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from node.settings import NodeSettings
from trust.pseudonymiser import Pseudonymiser

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from consent.client import ConsentClient
    from node.api.metrics import NodeMetrics
    from node.auth.service import AuthService
    from node.store import FhirStore
    from trust.pki import OrgCredentials

__all__ = ["Feature", "BackgroundTask", "Hook", "NodeServices", "node_services", "run_while_open"]


@dataclass(frozen=True)
class NodeServices:
    """Built once per process by the composition root; shared by every feature."""

    settings: NodeSettings
    engine: Engine
    store: FhirStore
    metrics: NodeMetrics
    auth: AuthService
    # Where national identifiers become regional pseudonyms (the authority's OPRF, or the
    # shared linkage key of older regions): trust/pseudonymiser.py.
    pseudonymiser: Pseudonymiser
    # This organisation's PKI credentials; None unless a registry or coordinator is configured.
    credentials: OrgCredentials | None
    # The consent registry's client (as this organisation); None when none is configured.
    consent: ConsentClient | None

    def close(self) -> None:
        if self.consent is not None:
            self.consent.close()
        self.engine.dispose()


Hook = Callable[[NodeServices, Any], AbstractAsyncContextManager[Any]]


def _always(_settings: NodeSettings) -> bool:
    return True


@dataclass(frozen=True)
class BackgroundTask:
    """Work that runs in exactly one worker process, when ``enabled(settings)``."""

    name: str
    run: Hook
    enabled: Callable[[NodeSettings], bool] = _always


@asynccontextmanager
async def run_while_open(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``work`` (a background hook's loop) as a task for as long as the context is open;
    on exit cancel it and wait until it has stopped."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True)
class Feature:
    name: str
    routers: tuple[APIRouter, ...] = ()
    migrations: tuple[Path, ...] = ()
    startup: tuple[Hook, ...] = ()
    background: tuple[BackgroundTask, ...] = ()


def node_services(request: Request) -> NodeServices:
    """FastAPI dependency: the services of the app serving this request."""
    return request.app.state.services  # type: ignore[no-any-return]
