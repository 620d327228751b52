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

Results are cached in memory by (key, identifier input) and, when the node supplies a
:class:`PseudonymStore` (``trust/pseudonym_store.py``, the one SQL implementation: a table of the
node's own database for its web app, ``node/pseudonym_store``; a SQLite file in the state folder
of its SuperNode and ``ipjms fl score``, ``federated/pseudonyms.py``), kept there by (key,
digest of the input), where the key is the authority's key version *and* its fingerprint
(its public key, sent with every answer and in ``/keys``) and the digest is
:func:`input_digest`, HMAC-SHA256 under a store key the store does not hold (derived from the
organisation's own signing key, :func:`store_key`, so a stolen store cannot be brute-forced
over the identifier space offline): an authority whose key folder was
lost and re-made has a new key under the same number, and nothing kept under the old
one is used (a warning says so) — so a restarted node asks the authority nothing for
the patients it already knows, instead of spending its budget (300 an hour) re-asking for every
one. A pseudonym is written to the store (committed) *before* it is returned, so nothing sent
out names a pseudonym a restart could lose; a failed write raises and returns nothing. The
node holds its own patients' identifiers anyway, so neither the cache nor the store tells
anything it could not compute for them; neither can test an identifier the node does not have
(and neither holds a key). A regional pseudonym is served
from the cache only under the authority's *current* key version, which the node learns from
every answer and re-reads from the authority's ``/keys`` at most every ``version_ttl``
seconds — so after a rotation a long-running node moves to the new version instead of handing
out the old one until it restarts; the store's entries are per version too, so a new version is
asked fresh, and an old version's entries still answer a routing pseudonym of that version.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trust.pseudonym import (
    oprf_input,
    oprf_pseudonym,
    pseudonym,
    pseudonym_key_version,
    routing_pseudonym,
)

# The authority's HTTP client (httpx, JWT assertions, the OPRF group) is imported where it is
# used: the node's offline commands load this module (its store's tables) and reach no authority.
if TYPE_CHECKING:
    from trust.oprf_client import OprfPseudonyms

__all__ = [
    "Pseudonymiser",
    "PseudonymStore",
    "KeyId",
    "input_digest",
    "store_key",
    "STORE_KEY_INFO",
    "OprfPseudonymiser",
    "LinkageKeyPseudonymiser",
    "routing_input",
    "authority_pseudonymiser",
]

_ROUTING_DOMAIN = b"ipjms-routing-pseudonym-v2"
#: HKDF info of :func:`store_key` (the purpose; the organisation id follows it)
STORE_KEY_INFO = b"ipjms-pseudonym-store-input-digest-v1"

log = logging.getLogger("ipjms.pseudonymiser")

#: the authority's key as a node knows it: (version number, fingerprint — its public key, hex)
KeyId = tuple[int, str]


class Pseudonymiser(Protocol):
    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        """One regional pseudonym per ``(system, normalised value)``."""
        ...

    def candidates(self, identifier: tuple[str, str]) -> list[str]:
        """The identifier's pseudonym under every key version still held, the current first
        (what a node offers the consent registry after a key rotation)."""
        ...

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        """The pseudonym an envelope between ``org_a`` and ``org_b`` carries in its header."""
        ...


class PseudonymStore(Protocol):
    """Where a node keeps the pseudonyms it obtained, across restarts. ``kind`` is
    ``"regional"`` or ``"routing"``; ``key`` is the authority's key version *and* fingerprint
    (a lost and re-made key has the same number, another fingerprint); ``digests`` are the
    store's :meth:`digest` of the OPRF inputs (the input itself is never stored). ``save`` is
    durable when it returns (one transaction: all of ``found`` or, on error, none of it) and
    keeps an entry already there."""

    def digest(self, x: bytes) -> bytes:
        """What an entry for OPRF input ``x`` is kept under: :func:`input_digest` with the
        store's key (kept out of the store itself)."""
        ...

    def load(self, kind: str, key: KeyId, digests: Sequence[bytes]) -> dict[bytes, str]:
        """The stored pseudonyms among ``digests`` under ``key`` (absent: not known)."""
        ...

    def save(self, kind: str, key: KeyId, found: Mapping[bytes, str]) -> None: ...

    def fingerprints(self, version: int) -> set[str]:
        """The key fingerprints the store holds entries under for key ``version``."""
        ...


def store_key(creds: Any) -> bytes:
    """The key a node's :class:`PseudonymStore` digests inputs with: HKDF-SHA256 of the
    organisation's own signing private key (``creds.signing_key``, which the node, its SuperNode
    and ``ipjms fl score`` load anyway: no new secret to manage), info
    :data:`STORE_KEY_INFO` ‖ organisation id. It is never written to the store, so a stolen
    store file or table cannot be brute-forced over a small identifier space offline (a plain
    hash could: a 9-digit id space in minutes). Re-issuing the organisation's signing key
    changes it: the store's entries then no longer match, and the node asks again (budget)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    signing = creds.signing_key
    secret = signing.private_numbers().private_value
    ikm = secret.to_bytes((signing.curve.key_size + 7) // 8, "big")
    info = STORE_KEY_INFO + b"\x00" + str(creds.org_id).encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(ikm)


def input_digest(key: bytes, x: bytes) -> bytes:
    """What a :class:`PseudonymStore` is keyed by: HMAC-SHA256 of the OPRF input under the
    store's key (:func:`store_key`)."""
    if len(key) < 32:
        raise ValueError("a pseudonym store key has at least 32 bytes")
    return hmac.new(key, x, hashlib.sha256).digest()


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
        store: PseudonymStore | None = None,
        cache_size: int = 100_000,
        version_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        #: the node's persistent store (None: memory only, e.g. ``ipjms fl score`` without
        #: ``--data-dir``)
        self.store = store
        self.cache_size = cache_size
        #: seconds between two reads of the authority's current key version (a rotation is an
        #: operator's act, rare; 5 minutes bounds how long the old version is handed out)
        self.version_ttl = version_ttl
        self.clock = clock
        self._cache: dict[tuple[KeyId, bytes], str] = {}
        self._version: int | None = None
        #: each key version's fingerprint as last learned from the authority
        self._fingerprints: dict[int, str] = {}
        #: the versions the authority holds, as last read from its ``/keys`` (a retired one
        #: drops out at the next read: :meth:`candidates` neither asks nor uses it)
        self._held: frozenset[int] = frozenset()
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def _remember(self, key: KeyId, found: dict[bytes, str]) -> None:
        with self._lock:
            if len(self._cache) + len(found) > self.cache_size:
                self._cache.clear()
            self._cache.update({(key, x): v for x, v in found.items()})

    def _known(self, kind: str, key: KeyId | None, inputs: Sequence[bytes]) -> dict[bytes, str]:
        """What memory, then the store, already holds for ``inputs`` under ``key`` (None: the
        key's fingerprint is not known yet, so nothing kept can be trusted)."""
        if key is None:
            return {}
        with self._lock:
            known = {x: self._cache[(key, x)] for x in inputs if (key, x) in self._cache}
        rest = [x for x in dict.fromkeys(inputs) if x not in known]
        if rest and self.store is not None:
            by_digest = {self.store.digest(x): x for x in rest}
            stored = self.store.load(kind, key, list(by_digest))
            found = {by_digest[d]: v for d, v in stored.items() if d in by_digest}
            self._remember(key, found)
            known.update(found)
        return known

    def _keep(self, kind: str, key: KeyId, found: dict[bytes, str]) -> None:
        """Durable first (the store commits or raises), then in memory: a pseudonym is used
        only once a restart cannot lose it."""
        if self.store is not None:
            store = self.store
            store.save(kind, key, {store.digest(x): v for x, v in found.items()})
        self._remember(key, found)

    def _learn_key(self, version: int, fingerprint: str) -> None:
        """Remember version's fingerprint; warn when the authority's key for a version is not
        the one this node knew or stored pseudonyms under (its entries are then not used: they
        are keyed by the fingerprint)."""
        with self._lock:
            before = self._fingerprints.get(version)
            self._fingerprints[version] = fingerprint
        if before == fingerprint:
            return
        others = {before} if before is not None else set()
        if before is None and self.store is not None:
            others = self.store.fingerprints(version) - {fingerprint}
        if others:
            log.warning(
                "the pseudonymisation authority's key v%d (fingerprint %s) is not the key this "
                "node's pseudonyms of v%d were made under (%s): none of those is used, patients "
                "are asked again. The authority's key folder may have been lost and re-made - "
                "tell its operator; pseudonyms made before do not link with new ones",
                version, fingerprint[:16], version, ", ".join(sorted(o[:16] for o in others)),
            )  # fmt: skip

    def _learn(self, version: int) -> None:
        with self._lock:
            self._version, self._checked = version, self.clock()

    def _key(self, version: int | None) -> KeyId | None:
        fingerprint = self._fingerprints.get(version) if version is not None else None
        return (version, fingerprint) if version is not None and fingerprint else None

    def current_version(self) -> int | None:
        """The authority's current key version as this node knows it (None: not yet known)."""
        if self.clock() - self._checked >= self.version_ttl:
            from trust.oprf_client import PseudonymServiceError

            self._checked = self.clock()  # unreachable: not asked again before the next ttl
            # (asking for a pseudonym then says why, or its answer teaches the version)
            with contextlib.suppress(PseudonymServiceError):
                self._learn(self._read_keys())
        return self._version

    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        inputs = [oprf_input(system, value) for system, value in identifiers]
        key = self._key(self.current_version())
        known = self._known("regional", key, inputs)
        missing = list(dict.fromkeys(x for x in inputs if x not in known))
        step = max(1, self.client.batch)
        for start in range(0, len(missing), step):  # each batch kept as it comes (a paced
            chunk = missing[start : start + step]  # backfill keeps its progress on a 429)
            got, fingerprint, outputs = self.client.outputs(chunk)
            found = {x: oprf_pseudonym(got, o) for x, o in zip(chunk, outputs, strict=True)}
            self._keep("regional", (got, fingerprint), found)
            self._learn_key(got, fingerprint)
            self._learn(got)
            if (got, fingerprint) != key:  # the authority rotated (or its key was re-made, or
                return self.regional(identifiers)  # it was unknown): all under the answer's key
            known.update(found)
        return [known[x] for x in inputs]

    def _read_keys(self) -> int:
        """Read the authority's ``/keys``: learn every held version's fingerprint and which
        versions are held; the current version is returned."""
        version, held = self.client.current_key()
        for v, fingerprint in held.items():
            self._learn_key(v, fingerprint)
        self._held = frozenset(held)
        return version

    def regional_at(
        self, identifiers: Sequence[tuple[str, str]], version: int, *, ask: bool = True
    ) -> list[str | None]:
        """Regional pseudonyms under key ``version`` — an older one after a rotation: what a
        node matches a patient's token against (``node/patient/links.py``). Memory and the
        store first; the rest asked of the authority by number (budgeted like any evaluation)
        when ``ask``, else None for them (a node's store holds every pseudonym it handed out)."""
        inputs = [oprf_input(system, value) for system, value in identifiers]
        if version not in self._fingerprints:
            from trust.oprf_client import PseudonymServiceError

            with contextlib.suppress(PseudonymServiceError):  # learn the held versions' keys
                self._read_keys()
        key = self._key(version)
        if key is None and self.store is not None:  # a retired version: what the store holds
            stored = self.store.fingerprints(version)
            key = (version, next(iter(stored))) if len(stored) == 1 else None
        known = self._known("regional", key, inputs)
        missing = list(dict.fromkeys(x for x in inputs if x not in known)) if ask else []
        step = max(1, self.client.batch)
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            got, fingerprint, outputs = self.client.outputs(chunk, version=version)
            found = {x: oprf_pseudonym(got, o) for x, o in zip(chunk, outputs, strict=True)}
            self._keep("regional", (got, fingerprint), found)
            self._learn_key(got, fingerprint)
            known.update(found)
        return [known.get(x) for x in inputs]

    def candidates(self, identifier: tuple[str, str]) -> list[str]:
        """The identifier's regional pseudonym under every key version the authority holds
        (issue 23, the consent registry after a rotation): the current one first, then each
        older held version, newest first. Each is this node's own OPRF evaluation of an
        identifier it holds — from memory or the store when kept, else asked of the authority
        by number once and then kept (so each extra version costs one evaluation per patient,
        once). A version the authority no longer lists in ``/keys`` (retired) is neither asked
        nor used; an older version it cannot answer now (unreachable, over budget) is left
        out, which can only narrow what the registry is asked (fail closed)."""
        from trust.oprf_client import PseudonymServiceError

        current = self.regional([identifier])[0]
        found = [current]
        now = pseudonym_key_version(current)
        for version in sorted((v for v in self._held if v != now), reverse=True):
            try:
                older = self.regional_at([identifier], version)[0]
            except PseudonymServiceError:  # what was kept before
                older = self.regional_at([identifier], version, ask=False)[0]
            if older is not None and version in self._held:
                found.append(older)
        return found

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        version = pseudonym_key_version(regional)
        if version is None:
            raise ValueError("not a pseudonym of the authority's OPRF (v<N>.<hex>)")
        x = routing_input(regional, org_a, org_b)
        if version not in self._fingerprints:
            self.current_version()  # a restarted node learns the fingerprints from /keys
        hit = self._known("routing", self._key(version), [x]).get(x)
        if hit is not None:
            return hit
        got, fingerprint, (output,) = self.client.outputs([x], version=version)
        value = oprf_pseudonym(got, output)
        self._keep("routing", (got, fingerprint), {x: value})
        self._learn_key(got, fingerprint)
        return value


def authority_pseudonymiser(
    url: str,
    creds: Any,
    *,
    ca_cert_file: Path | str | None = None,
    store: PseudonymStore | None = None,
) -> OprfPseudonymiser:
    """The one way a node (its web app, its SuperNode, ``ipjms fl score``) reaches the
    pseudonymisation authority: over HTTPS it trusts the regional CA alone — ``ca_cert_file``
    when given, else the CA certificate in the organisation's own credentials
    (``creds.ca_cert_pem``) — never the system's public roots. ``store``: where the node keeps
    what it obtained across restarts (the node's web app passes its database's; the SuperNode
    and ``ipjms fl score`` a file in their state folder, ``federated/pseudonyms.py``)."""
    verify: bool | str | ssl.SSLContext = True
    if url.startswith("https"):
        if ca_cert_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert_file))
        else:
            verify = ssl.create_default_context(cadata=creds.ca_cert_pem.decode())
    from trust.oprf_client import OprfPseudonyms

    return OprfPseudonymiser(OprfPseudonyms(url, creds, verify=verify), store=store)


class LinkageKeyPseudonymiser:
    """The pre-OPRF scheme (``trust.pseudonym.pseudonym``: the value only, no system)."""

    def __init__(self, linkage_key: bytes) -> None:
        self.linkage_key = linkage_key

    def regional(self, identifiers: Sequence[tuple[str, str]]) -> list[str]:
        return [pseudonym(self.linkage_key, value) for _, value in identifiers]

    def candidates(self, identifier: tuple[str, str]) -> list[str]:
        """One key, never rotated: the one pseudonym."""
        return self.regional([identifier])

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        return routing_pseudonym(self.linkage_key, regional, org_a, org_b)
