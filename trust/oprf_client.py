"""A node's side of the pseudonymisation authority: blind, ask, finalise (RFC 9497 base mode).

``OprfPseudonyms(url, creds).pseudonyms([(system, value), …])`` → ``v<N>.<hex>`` pseudonyms in
the same order. Each identifier is blinded with a fresh random scalar before it leaves the node,
so the authority sees uniformly random group elements; only the finalised output, which needs
the authority's key, names the patient. The node keeps no key that could reverse a pseudonym.
"""

from __future__ import annotations

import ssl
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


class PseudonymServiceError(RuntimeError):
    """The authority refused or could not be reached (the message says which; no identifier)."""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers.get("retry-after", ""))
    except ValueError:
        return None


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

    def _evaluate(self, blinded: list[bytes], version: int | None) -> tuple[int, list[bytes]]:
        body: dict[str, Any] = {"blinded": [b.hex() for b in blinded]}
        if version is not None:
            body["version"] = version
        while True:
            headers = {"Authorization": "Bearer " + make_org_assertion(self.creds, self.url)}
            try:
                r = httpx.post(
                    self.url, json=body, headers=headers, timeout=self.timeout, verify=self.verify
                )
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
        return int(answer["version"]), evaluated

    def current_version(self) -> int:
        """The authority's current key version (its public ``/healthz``; no budget spent)."""
        url = self.url.removesuffix("/oprf/evaluate") + "/healthz"
        try:
            r = httpx.get(url, timeout=self.timeout, verify=self.verify)
            r.raise_for_status()
            return int(r.json()["current_version"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise PseudonymServiceError(f"pseudonym service version unknown: {exc}") from None

    def outputs(
        self, inputs: Sequence[bytes], *, version: int | None = None
    ) -> tuple[int, list[bytes]]:
        """The OPRF outputs of raw ``inputs`` under key ``version`` (default: current)."""
        out: list[bytes] = []
        got = version or 0
        for start in range(0, len(inputs), self.batch):
            chunk = list(inputs[start : start + self.batch])
            blinds = [oprf.blind(x) for x in chunk]
            got, evaluated = self._evaluate([b for _, b in blinds], version)
            version = got  # one version for the whole call, even across a rotation
            for x, (r, _), e in zip(chunk, blinds, evaluated, strict=True):
                out.append(oprf.finalize(x, r, e))
        return got, out

    def pseudonyms(
        self, identifiers: Sequence[tuple[str, str]], *, version: int | None = None
    ) -> list[str]:
        """One pseudonym per ``(system, value)``, under key ``version`` (default: current)."""
        inputs = [oprf_input(system, value) for system, value in identifiers]
        got, outputs = self.outputs(inputs, version=version)
        return [oprf_pseudonym(got, output) for output in outputs]
