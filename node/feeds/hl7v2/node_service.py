"""The node app's MLLP background service (register in node/api/lifecycle.py ``BACKGROUND``).

Reads ``app.state.settings.mllp_port`` (None → no listener) and ``mllp_host`` if the settings
have it (else the HTTP ``host``), and stores through ``app.state.store.transaction``.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

from node.feeds.hl7v2.mllp import mllp_listener
from node.feeds.hl7v2.receiver import store_submitter

__all__ = ["mllp_service"]


def mllp_service(app: Any) -> AbstractAsyncContextManager[Any]:
    settings = app.state.settings
    port = getattr(settings, "mllp_port", None)
    if port is None:
        return contextlib.nullcontext()
    host = getattr(settings, "mllp_host", None) or settings.host
    return mllp_listener(host, port, store_submitter(app.state.store))
