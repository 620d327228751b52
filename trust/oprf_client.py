"""A node's side of the pseudonymisation authority: blind, ask, finalise (RFC 9497 base mode).

``OprfPseudonyms(url, creds).pseudonyms([(system, value), …])`` → ``v<N>.<hex>`` pseudonyms in
the same order. Each identifier is blinded with a fresh random scalar before it leaves the node,
so the authority sees uniformly random group elements; only the finalised output, which needs
the authority's key, names the patient. The node keeps no key that could reverse a pseudonym.
Every answer names the key's fingerprint (``trust.pseudonym_keys.key_fingerprint``) beside its
version number, so a caller keeping results can tell a re-made key from the one it knew.

One HTTP client per process, kept: its TLS context is built once and its connections are kept
alive. (A new client per call built a TLS context — loading a CA bundle — and opened a new
connection every time: ≈ 50–70 ms of each evaluation on the exchange bench, issue 19, paid twice
by a referral's sender and once by its receiver.) Every request still carries a fresh org
assertion, and the authority still checks, budgets and audits each one.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from trust import group_backend, oprf
from trust.backend_auth import make_org_assertion
from trust.pseudonym import oprf_input, oprf_pseudonym

__all__ = ["OprfPseudonyms", "PseudonymServiceError", "MAX_BATCH"]

#: elements in one request (the authority refuses more: trust.oprf_service) and this client's
#: batch. Ordinary work asks one patient at a time (identity lookup, consent eligibility in an
#: FL cohort, scoring, an envelope's routing pseudonym); the node's batch callers (the locator
#: publish and the link resolution, pages of 500 patients) are split into batches of this size,
#: each remembered as it comes, and paced by the authority's budget (429 + Retry-After)
MAX_BATCH = 100

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class PseudonymServiceError(RuntimeError):
    """The authority refused or could not be reached (the message says which; no identifier)."""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers.get("retry-after", ""))
    except ValueError:
        return None


def _fingerprint(value: object) -> str:
    """A key fingerprint as the authority sends it; an authority that sends none is refused
    (without it, a re-made key could not be told from the one a node knew)."""
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise PseudonymServiceError("pseudonym service answered without a key fingerprint")
    return value


class OprfPseudonyms:
    def __init__(
        self,
        base_url: str,
        creds: Any,
        *,
        verify: bool | str | ssl.SSLContext = True,
        timeout: float = 30.0,
        batch: int = MAX_BATCH,
        max_wait: float = 30.0,
    ) -> None:
        group_backend.selected()  # at start: GroupUnavailableError names what to install
        self.url = base_url.rstrip("/") + "/oprf/evaluate"
        self.creds = creds
        self.verify = verify
        self.timeout = timeout
        self.batch = batch
        #: on a 429 whose Retry-After is at most this (seconds), wait and ask again: a batch
        #: caller is paced by the authority's budget instead of failing; a longer wait fails
        self.max_wait = max_wait
        self._http: httpx.Client | None = None
        self._http_pid = 0
        self._http_lock = threading.Lock()

    def _client(self) -> httpx.Client:
        """The kept HTTP client (thread-safe); a forked worker makes its own, never sharing
        its parent's connections."""
        with self._http_lock:
            if self._http is None or self._http_pid != os.getpid():
                self._http = httpx.Client(timeout=self.timeout, verify=self.verify)
                self._http_pid = os.getpid()
            return self._http

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None and self._http_pid == os.getpid():
                self._http.close()
            self._http = None

    def _evaluate(self, blinded: list[bytes], version: int | None) -> tuple[int, str, list[bytes]]:
        body: dict[str, Any] = {"blinded": [b.hex() for b in blinded]}
        if version is not None:
            body["version"] = version
        while True:
            headers = {"Authorization": "Bearer " + make_org_assertion(self.creds, self.url)}
            try:
                r = self._client().post(self.url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise PseudonymServiceError(f"pseudonym service unreachable: {exc}") from None
            wait = _retry_after(r) if r.status_code == 429 else None
            if wait is None or wait > self.max_wait:
                break
            time.sleep(wait)
        if r.status_code != 200:
            try:
                why = r.json()["issue"][0]["diagnostics"]
            except (ValueError, KeyError, IndexError, TypeError):
                why = r.text[:200]
            raise PseudonymServiceError(f"pseudonym service answered {r.status_code}: {why}")
        answer = r.json()
        evaluated = [bytes.fromhex(e) for e in answer["evaluated"]]
        if answer.get("suite") != oprf.SUITE or len(evaluated) != len(blinded):
            raise PseudonymServiceError("pseudonym service answered another suite or count")
        return int(answer["version"]), _fingerprint(answer.get("key_fingerprint")), evaluated

    def current_key(self) -> tuple[int, dict[int, str]]:
        """The authority's current key version and every held version's fingerprint (its
        public ``/keys``: no budget spent, and answered while the authority's database is down,
        so a node can use what it stored). An authority older than ``/keys`` (404) is read
        from its ``/healthz``, as before."""
        base = self.url.removesuffix("/oprf/evaluate")
        try:
            r = self._client().get(base + "/keys")
            if r.status_code == 404:
                r = self._client().get(base + "/healthz")
            r.raise_for_status()
            keys = r.json()
            held = {int(v): _fingerprint(fp) for v, fp in keys["key_fingerprints"].items()}
            return int(keys["current_version"]), held
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PseudonymServiceError(f"pseudonym service version unknown: {exc}") from None

    def current_version(self) -> int:
        """The authority's current key version (its public ``/keys``; no budget spent)."""
        return self.current_key()[0]

    def outputs(
        self, inputs: Sequence[bytes], *, version: int | None = None
    ) -> tuple[int, str, list[bytes]]:
        """The OPRF outputs of raw ``inputs`` under key ``version`` (default: current), with
        the version and the fingerprint of the key that made them."""
        out: list[bytes] = []
        got, key = version or 0, ""
        for start in range(0, len(inputs), self.batch):
            chunk = list(inputs[start : start + self.batch])
            blinds = [oprf.blind(x) for x in chunk]
            got, fp, evaluated = self._evaluate([b for _, b in blinds], version)
            if key and fp != key:  # the same version number, another key, within one call
                raise PseudonymServiceError("the pseudonym service's key changed during a call")
            version, key = got, fp  # one version for the whole call, even across a rotation
            for x, (r, _), e in zip(chunk, blinds, evaluated, strict=True):
                out.append(oprf.finalize(x, r, e))
        return got, key, out

    def pseudonyms(
        self, identifiers: Sequence[tuple[str, str]], *, version: int | None = None
    ) -> list[str]:
        """One pseudonym per ``(system, value)``, under key ``version`` (default: current)."""
        inputs = [oprf_input(system, value) for system, value in identifiers]
        got, _, outputs = self.outputs(inputs, version=version)
        return [oprf_pseudonym(got, output) for output in outputs]
