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

Results are cached in memory (identifier input → pseudonym): the node holds its own patients'
identifiers anyway, so the cache tells nothing it could not compute for them; it cannot be used
to test an identifier the node does not have.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from trust.oprf_client import OprfPseudonyms
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
    def __init__(self, client: OprfPseudonyms, *, cache_size: int = 100_000) -> None:
        self.client = client
        self.cache_size = cache_size
        self._cache: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def _remember(self, found: dict[bytes, str]) -> None:
        with self._lock:
            if len(self._cache) + len(found) > self.cache_size:
                self._cache.clear()
            self._cache.update(found)

    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        inputs = [oprf_input(system, value) for system, value in identifiers]
        with self._lock:
            missing = list(dict.fromkeys(x for x in inputs if x not in self._cache))
            known = {x: self._cache[x] for x in inputs if x in self._cache}
        step = max(1, self.client.batch)
        for start in range(0, len(missing), step):  # each batch kept as it comes (a paced
            chunk = missing[start : start + step]  # backfill keeps its progress on a 429)
            version, outputs = self.client.outputs(chunk)
            found = {x: oprf_pseudonym(version, o) for x, o in zip(chunk, outputs, strict=True)}
            self._remember(found)
            known.update(found)
        return [known[x] for x in inputs]

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        version = pseudonym_key_version(regional)
        if version is None:
            raise ValueError("not a pseudonym of the authority's OPRF (v<N>.<hex>)")
        x = routing_input(regional, org_a, org_b)
        with self._lock:
            hit = self._cache.get(x)
        if hit is not None:
            return hit
        got, (output,) = self.client.outputs([x], version=version)
        value = oprf_pseudonym(got, output)
        self._remember({x: value})
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
