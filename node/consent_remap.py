"""Re-mapping this node's patients in the consent registry after a key rotation (issue 23).

The pseudonymisation authority's key rotation gives every patient a new pseudonym
(``v2.…``), while the consent registry keeps each patient under the pseudonym they enrolled
with (``v1.…``): asked with the new one, it finds no consent and denies (fail closed). The
registry cannot tell that two pseudonyms are one person; this node can, since it holds the
identifiers. :func:`remap_patients` goes through the node's Patients and, for each one with a
pseudonym of an older key version, sends the pair (old, new) to the registry
(``ConsentClient.register_aliases``, ``consent/aliases.py``), in batches of at most 100. The
registry accepts only the patients this organisation enrolled (its trust rule); the others are
skipped there.

The old pseudonyms come from the node's pseudonym store (every pseudonym this node ever handed
out — so every patient it could have enrolled — is kept there before it is used): no budget is
spent on them. Only a node without a store asks the authority for them, by version number. The
new ones are asked like any (``OprfPseudonymiser.regional``: batches of 100, 429s waited out,
kept in the store, so a second run asks nothing).

Runs as the ``ENROLMENT`` feature's background work (``REMAP``: whenever the node learns a newer
current key version, and once at start) and as ``ipjms node pseudonyms remap`` — the same
function. Idempotent: a pair the registry already holds counts as ``already``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from consent.client import ConsentClient, ConsentRegistryError
from node.feature import BackgroundTask, NodeServices, run_while_open
from node.identity import national_identifier_with_system
from node.settings import NodeSettings
from trust.pseudonym import IdentifierError, pseudonym_key_version
from trust.pseudonymiser import OprfPseudonymiser

__all__ = ["RemapReport", "remap_patients", "remap_on_new_version", "REMAP", "BATCH"]

log = logging.getLogger("ipjms.node.remap")

#: pairs per registry request (the registry takes at most 500)
BATCH = 100
_PAGE = 500
#: seconds between two looks at the authority's current key version (its own ttl is 300 s)
_INTERVAL = 300.0


@dataclass
class RemapReport:
    current: int | None = None  # the authority's current key version
    older: list[int] = field(default_factory=list)  # the versions re-mapped from
    patients: int = 0  # Patients looked at
    pairs: int = 0  # pairs sent
    mapped: int = 0
    already: int = 0
    skipped: int = 0  # not enrolled by this organisation (or unknown to the registry)
    conflicts: int = 0  # refused (409): e.g. the new pseudonym enrolled on its own meanwhile

    def add(self, answer: dict[str, int]) -> None:
        self.mapped += answer.get("mapped", 0)
        self.already += answer.get("already", 0)
        self.skipped += answer.get("skipped", 0)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _older_versions(pseudonymiser: OprfPseudonymiser, current: int) -> list[int]:
    if pseudonymiser.store is not None:  # only versions this node ever held pseudonyms of
        return [v for v in range(1, current) if pseudonymiser.store.fingerprints(v)]
    return list(range(1, current))


def _send(registry: ConsentClient, pairs: Sequence[tuple[str, str]], report: RemapReport) -> None:
    """One batch; a conflict (the whole batch refused) is retried pair by pair, so one patient
    whose new pseudonym has state of its own does not hold back the others."""
    report.pairs += len(pairs)
    try:
        report.add(registry.register_aliases(pairs))
        return
    except ConsentRegistryError as exc:
        if exc.status != 409 or len(pairs) == 1:
            if exc.status == 409:
                report.conflicts += 1
                return
            raise
    for pair in pairs:
        try:
            report.add(registry.register_aliases([pair]))
        except ConsentRegistryError as exc:
            if exc.status != 409:
                raise
            report.conflicts += 1


def remap_patients(
    store: Any,
    pseudonymiser: Any,
    registry: ConsentClient,
    *,
    ask_old: bool | None = None,
    batch: int = BATCH,
) -> RemapReport:
    """Register every local patient's current pseudonym as an alias of its older ones at the
    consent registry. ``ask_old``: ask the authority for the old pseudonyms (default: only when
    the pseudonymiser has no store). Nothing to do without the authority's OPRF (a linkage-key
    region never rotates) or before a rotation."""
    report = RemapReport()
    if not isinstance(pseudonymiser, OprfPseudonymiser):
        return report
    report.current = current = pseudonymiser.current_version()
    if current is None or current <= 1:
        return report
    report.older = older = _older_versions(pseudonymiser, current)
    if not older:
        return report
    ask = pseudonymiser.store is None if ask_old is None else ask_old
    pending: list[tuple[str, str]] = []
    offset = 0
    while True:
        page = store.search("Patient", [("_count", str(_PAGE)), ("_offset", str(offset))])
        ids: list[tuple[str, str]] = []
        for patient in page.resources:
            with suppress(IdentifierError):
                found = national_identifier_with_system(patient)
                if found is not None:
                    ids.append(found)
        report.patients += len(page.resources)
        olds = {v: pseudonymiser.regional_at(ids, v, ask=ask) for v in older}
        having = [i for i in range(len(ids)) if any(olds[v][i] for v in older)]
        news = pseudonymiser.regional([ids[i] for i in having]) if having else []
        for i, new in zip(having, news, strict=True):
            new_version = pseudonym_key_version(new) or 0
            for v in older:
                old = olds[v][i]
                if old is not None and v < new_version:
                    pending.append((old, new))
            while len(pending) >= batch:
                _send(registry, pending[:batch], report)
                del pending[:batch]
        offset += len(page.resources)
        if not page.resources or offset >= page.total:
            break
    if pending:
        _send(registry, pending, report)
    return report


def _enabled(settings: NodeSettings) -> bool:
    return bool(settings.pseudonym_url) and bool(settings.consent.url)


async def remap_on_new_version(services: NodeServices, done: int | None) -> int | None:
    """One turn of the background work: re-map when the authority's current key version (as
    the node knows it) is not ``done``, the last one re-mapped to. Returns the version now
    done (unchanged when there was nothing to do); an error propagates (and ``done`` stays)."""
    current = await run_in_threadpool(services.pseudonymiser.current_version)  # type: ignore[attr-defined]
    if current is None or current == done or services.consent is None:
        return done
    report = await run_in_threadpool(
        remap_patients, services.store, services.pseudonymiser, services.consent
    )
    if report.pairs:
        log.info("pseudonym re-map to key v%s: %s", current, report.as_dict())
    return current


@asynccontextmanager
async def _remap_on_rotation(services: NodeServices, _app: Any) -> AsyncIterator[None]:
    """Background work (one worker): re-map whenever the node learns a newer current key
    version (and once at start: the node may have been down during the rotation)."""
    done: int | None = None

    async def loop() -> None:
        nonlocal done
        while True:
            try:
                done = await remap_on_new_version(services, done)
            except Exception as exc:  # the registry or authority is away: try again later
                log.warning("pseudonym re-map failed (%s); will try again", type(exc).__name__)
            await asyncio.sleep(_INTERVAL)

    async with run_while_open(loop()):
        yield


REMAP = BackgroundTask("pseudonym-remap", _remap_on_rotation, enabled=_enabled)
