"""The gate's verdicts from the coordinator's model registry (I/O edge).

``RegistryGate.verdict(model_id)`` reads the model's card as the node's organisation (an
organisation assertion, ``trust.backend_auth``, as ``ipjms fl score`` does; over https the
server is checked against the regional CA), checks it against the model-card wire contract
(``protos.model_card.check_card``) and asks the pure :func:`node.care.model_gate.gate`. A verdict
is reused for ``ttl`` seconds. Fails closed: no registry configured, no credentials, the
registry unreachable, no published card or a card outside the contract — not for clinical use,
with the reason (a failure to read is retried after ``RETRY_SECONDS``, not ``ttl``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from node.care.model_gate import GateVerdict, ModelFloor, gate
from protos.model_card import ModelRejected, check_card

__all__ = ["RegistryGate", "RETRY_SECONDS"]

log = logging.getLogger("ipjms.node.care")
RETRY_SECONDS = 30.0


class RegistryGate:
    def __init__(
        self,
        registry_url: str | None,
        floor: ModelFloor,
        credentials_dir: Path | None,
        *,
        ttl: float = 300.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = registry_url.rstrip("/") if registry_url else None
        self.floor, self.credentials_dir, self.ttl, self.clock = floor, credentials_dir, ttl, clock
        self.timeout = timeout
        self._cache: dict[str, tuple[float, GateVerdict]] = {}
        self._creds: Any = None
        self._http = http  # given: used as is (tests hand in the coordinator app's client)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def verdict(self, model_id: str) -> GateVerdict:
        with self._lock:
            cached = self._cache.get(model_id)
            if cached is not None and cached[0] > self.clock():
                return cached[1]
            verdict, keep = self._fetch(model_id)
            self._cache[model_id] = (self.clock() + keep, verdict)
            if not verdict.clinical_use:
                log.info("care: model %s gated out: %s", model_id, verdict.reason)
            return verdict

    def _fetch(self, model_id: str) -> tuple[GateVerdict, float]:
        def unread(why: str) -> tuple[GateVerdict, float]:
            return GateVerdict(model_id, False, f"not for clinical use: {why}"), RETRY_SECONDS

        if self.url is None:
            return unread("no model registry configured (care.model_registry_url)")
        try:
            creds, http = self._client()
        except Exception as exc:  # noqa: BLE001 - no credentials: the gate stays shut
            return unread(f"this node's credentials could not be loaded ({type(exc).__name__})")
        from trust.backend_auth import make_org_assertion

        url = f"{self.url}/models/{quote(model_id, safe='')}"
        try:
            r = http.get(url, headers={"Authorization": f"Bearer {make_org_assertion(creds, url)}"})
        except httpx.HTTPError as exc:
            return unread(f"the model registry could not be reached ({type(exc).__name__})")
        if r.status_code == 404:
            return gate(model_id, None, self.floor), self.ttl
        if r.status_code != 200:
            return unread(f"the model registry answered {r.status_code}")
        try:
            card = check_card(r.json())
        except (ValueError, ModelRejected) as exc:
            return unread(f"the model card is not valid ({exc})")
        return gate(model_id, card, self.floor), self.ttl

    def _client(self) -> tuple[Any, httpx.Client]:
        if self._creds is None:
            from trust.pki import load_org

            if self.credentials_dir is None:
                raise FileNotFoundError("no credentials folder")
            self._creds = load_org(self.credentials_dir)
        if self._http is None:
            verify = ssl.create_default_context(cadata=self._creds.ca_cert_pem.decode())
            self._http = httpx.Client(timeout=self.timeout, verify=verify)
        return self._creds, self._http
