"""The OPRF client keeps one HTTP client per process (issue 19): no TLS context built and no
connection opened per evaluation; a forked worker makes its own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from trust import oprf_client
from trust.oprf_client import OprfPseudonyms

FP = "ab" * 32


def _health(request: httpx.Request) -> httpx.Response:
    assert request.url.path in ("/keys", "/healthz")
    return httpx.Response(200, json={"current_version": 1, "key_fingerprints": {"1": FP}})


def test_one_http_client_per_process_kept_across_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[httpx.Client] = []
    real = httpx.Client

    def client(**kwargs: Any) -> httpx.Client:
        made.append(real(transport=httpx.MockTransport(_health), timeout=kwargs["timeout"]))
        return made[-1]

    monkeypatch.setattr(oprf_client.httpx, "Client", client)
    ps = OprfPseudonyms("http://authority.test", creds=None)
    assert ps.current_key() == (1, {1: FP})
    assert ps.current_version() == 1
    assert len(made) == 1  # the second call reused the first client
    monkeypatch.setattr(oprf_client.os, "getpid", lambda: -1)  # as in a forked worker
    assert ps.current_version() == 1
    assert len(made) == 2  # its own client, not the parent's connections
    ps.close()
    assert made[1].is_closed
