"""The HL7 v2 feed as a node feature: an MLLP listener, background work of exactly one worker.

Configured by ``settings.hl7`` (``mllp_port``: None → no listener, 0 → a port the OS picks,
announced in ``bound-ports.json``; ``mllp_host``: default the HTTP ``host``); stores through the
app's own ``FhirStore``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from node.feature import BackgroundTask, Feature, NodeServices
from node.feeds.hl7v2.mllp import mllp_listener
from node.feeds.hl7v2.receiver import store_submitter
from node.settings import NodeSettings
from servicekit.ports import add_announced_ports

__all__ = ["mllp_service", "HL7_FEED"]


def mllp_service(app: Any) -> AbstractAsyncContextManager[Any]:
    """The listener for the app's lifespan (yields the ``asyncio.Server``, None when off).
    ``mllp_port`` 0: the OS picks; the port is announced as ``mllp`` in the data dir's
    ``bound-ports.json`` (``servicekit.ports``)."""
    settings = app.state.settings
    port = settings.hl7.mllp_port
    if port is None:
        return contextlib.nullcontext()
    host = settings.hl7.mllp_host or settings.host
    listener = mllp_listener(host, port, store_submitter(app.state.store))
    return _announcing(listener, settings.data_dir) if port == 0 else listener


@contextlib.asynccontextmanager
async def _announcing(
    listener: AbstractAsyncContextManager[Any], data_dir: Path
) -> AsyncIterator[Any]:
    async with listener as server:
        add_announced_ports(data_dir, mllp=int(server.sockets[0].getsockname()[1]))
        yield server


def _listener(_services: NodeServices, app: Any) -> AbstractAsyncContextManager[Any]:
    return mllp_service(app)


def _configured(settings: NodeSettings) -> bool:
    return settings.hl7.mllp_port is not None


HL7_FEED = Feature(
    name="hl7-feed",
    background=(BackgroundTask("mllp-listener", _listener, enabled=_configured),),
)
