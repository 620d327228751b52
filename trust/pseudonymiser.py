"""Where a service gets patient pseudonyms from: the authority's OPRF, or (older deployments,
tests) the region's shared HMAC linkage key. One interface, two sources.

* :class:`OprfPseudonymiser` — the node holds no key. Regional pseudonym =
  ``OPRF(domain ‖ identifier system ‖ value)``; routing pseudonym for a pair of organisations =
  ``OPRF("ipjms-routing-pseudonym-v2" ‖ sorted pair ‖ regional pseudonym)`` under the key
  version the regional pseudonym names. Both ends of an exchange know the regional pseudonym
  (the receiver finds it inside the payload), so both can compute and check the routing one;
  the coordinator holds regional pseudonyms (its locator) but is not a client of the authority,
  so it can compute none, and a node that tries to is rate-limited and audited.
* :class:`LinkageKeyPseudonymiser` — ``HMAC(linkage key, value)`` as before issue 23: whoever
  holds the node's key file can test guesses offline (``tests/exchange`` shows it).

Results are cached in memory by (key version, identifier input): the node holds its own
patients' identifiers anyway, so the cache tells nothing it could not compute for them; it
cannot be used to test an identifier the node does not have. A regional pseudonym is served
from the cache only under the authority's *current* key version, which the node learns from
every answer and re-reads from the authority's ``/healthz`` at most every ``version_ttl``
seconds — so after a rotation a long-running node moves to the new version instead of handing
out the old one until it restarts.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from trust.oprf_client import OprfPseudonyms, PseudonymServiceError
from trust.pseudonym import (
    oprf_input,
    oprf_pseudonym,
    pseudonym,
    pseudonym_key_version,
    routing_pseudonym,
)

__all__ = [
    "Pseudonymiser",
    "OprfPseudonymiser",
    "LinkageKeyPseudonymiser",
    "routing_input",
    "authority_pseudonymiser",
]

_ROUTING_DOMAIN = b"ipjms-routing-pseudonym-v2"


class Pseudonymiser(Protocol):
    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        """One regional pseudonym per ``(system, normalised value)``."""
        ...

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        """The pseudonym an envelope between ``org_a`` and ``org_b`` carries in its header."""
        ...


def routing_input(regional: str, org_a: str, org_b: str) -> bytes:
    if not regional or org_a == org_b:
        raise ValueError("a routing pseudonym needs a pseudonym and two organisations")
    first, second = sorted((org_a, org_b))
    return b"\x00".join((_ROUTING_DOMAIN, first.encode(), second.encode(), regional.encode()))


class OprfPseudonymiser:
    def __init__(
        self,
        client: OprfPseudonyms,
        *,
        cache_size: int = 100_000,
        version_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cache_size = cache_size
        #: seconds between two reads of the authority's current key version (a rotation is an
        #: operator's act, rare; 5 minutes bounds how long the old version is handed out)
        self.version_ttl = version_ttl
        self.clock = clock
        self._cache: dict[tuple[int, bytes], str] = {}
        self._version: int | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def _remember(self, version: int, found: dict[bytes, str]) -> None:
        with self._lock:
            if len(self._cache) + len(found) > self.cache_size:
                self._cache.clear()
            self._cache.update({(version, x): v for x, v in found.items()})

    def _learn(self, version: int) -> None:
        with self._lock:
            self._version, self._checked = version, self.clock()

    def current_version(self) -> int | None:
        """The authority's current key version as this node knows it (None: not yet known)."""
        if self.clock() - self._checked >= self.version_ttl:
            self._checked = self.clock()  # unreachable: not asked again before the next ttl
            # (asking for a pseudonym then says why, or its answer teaches the version)
            with contextlib.suppress(PseudonymServiceError):
                self._learn(self.client.current_version())
        return self._version

    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        inputs = [oprf_input(system, value) for system, value in identifiers]
        version = self.current_version()
        known: dict[bytes, str] = {}
        if version is not None:
            with self._lock:
                known = {
                    x: self._cache[(version, x)] for x in inputs if (version, x) in self._cache
                }
        missing = list(dict.fromkeys(x for x in inputs if x not in known))
        step = max(1, self.client.batch)
        for start in range(0, len(missing), step):  # each batch kept as it comes (a paced
            chunk = missing[start : start + step]  # backfill keeps its progress on a 429)
            got, outputs = self.client.outputs(chunk)
            found = {x: oprf_pseudonym(got, o) for x, o in zip(chunk, outputs, strict=True)}
            self._remember(got, found)
            self._learn(got)
            if got != version:  # the authority rotated: every answer under the new version
                return self.regional(identifiers)
            known.update(found)
        return [known[x] for x in inputs]

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        version = pseudonym_key_version(regional)
        if version is None:
            raise ValueError("not a pseudonym of the authority's OPRF (v<N>.<hex>)")
        x = routing_input(regional, org_a, org_b)
        with self._lock:
            hit = self._cache.get((version, x))
        if hit is not None:
            return hit
        got, (output,) = self.client.outputs([x], version=version)
        value = oprf_pseudonym(got, output)
        self._remember(got, {x: value})
        return value


def authority_pseudonymiser(
    url: str, creds: Any, *, ca_cert_file: Path | str | None = None
) -> OprfPseudonymiser:
    """The one way a node (its web app, its SuperNode, ``ipjms fl score``) reaches the
    pseudonymisation authority: over HTTPS it trusts the regional CA alone — ``ca_cert_file``
    when given, else the CA certificate in the organisation's own credentials
    (``creds.ca_cert_pem``) — never the system's public roots."""
    verify: bool | str | ssl.SSLContext = True
    if url.startswith("https"):
        if ca_cert_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert_file))
        else:
            verify = ssl.create_default_context(cadata=creds.ca_cert_pem.decode())
    return OprfPseudonymiser(OprfPseudonyms(url, creds, verify=verify))


class LinkageKeyPseudonymiser:
    """The pre-OPRF scheme (``trust.pseudonym.pseudonym``: the value only, no system)."""

    def __init__(self, linkage_key: bytes) -> None:
        self.linkage_key = linkage_key

    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        return [pseudonym(self.linkage_key, value) for _, value in identifiers]

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        return routing_pseudonym(self.linkage_key, regional, org_a, org_b)
