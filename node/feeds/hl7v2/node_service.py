"""The HL7 v2 feed as a node feature: an MLLP listener, background work of exactly one worker.

Configured by ``settings.hl7`` (``mllp_port``: None → no listener; ``mllp_host``: default the
HTTP ``host``); stores through the app's own ``FhirStore``.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

from node.feature import BackgroundTask, Feature, NodeServices
from node.feeds.hl7v2.mllp import mllp_listener
from node.feeds.hl7v2.receiver import store_submitter
from node.settings import NodeSettings

__all__ = ["mllp_service", "HL7_FEED"]


def mllp_service(app: Any) -> AbstractAsyncContextManager[Any]:
    settings = app.state.settings
    port = settings.hl7.mllp_port
    if port is None:
        return contextlib.nullcontext()
    host = settings.hl7.mllp_host or settings.host
    return mllp_listener(host, port, store_submitter(app.state.store))


def _listener(_services: NodeServices, app: Any) -> AbstractAsyncContextManager[Any]:
    return mllp_service(app)


def _configured(settings: NodeSettings) -> bool:
    return settings.hl7.mllp_port is not None


HL7_FEED = Feature(
    name="hl7-feed",
    background=(BackgroundTask("mllp-listener", _listener, enabled=_configured),),
)
