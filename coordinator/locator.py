"""The record locator: which organisations hold a patient, by pseudonym only."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import Engine, delete, func, insert, select

from coordinator.envelope_rules import PSEUDONYM_PATTERN
from coordinator.errors import ExchangeError
from coordinator.schema import locator
from servicekit.storage import reader
from trust.pseudonym import newest_key_version, pseudonym_key_version

__all__ = ["RecordLocator", "MAX_PUBLISH"]

MAX_PUBLISH = 50_000  # pseudonyms per Publish call


class RecordLocator:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # reads take no write lock on SQLite (servicekit.storage.reader): they do not queue
        # behind the writers' durable commits
        self._read = reader(engine)

    def publish(self, org_id: str, pseudonyms: Iterable[str], *, replace: bool = False) -> int:
        wanted = set(pseudonyms)
        if len(wanted) > MAX_PUBLISH:
            raise ExchangeError("RESOURCE_EXHAUSTED", f"at most {MAX_PUBLISH} pseudonyms per call")
        bad = sum(1 for p in wanted if not PSEUDONYM_PATTERN.match(p))
        if bad:
            raise ExchangeError("INVALID_ARGUMENT", f"{bad} malformed pseudonyms (64 hex digits)")
        now = time.time()
        with self.engine.begin() as conn:
            held: set[str] = set(
                conn.execute(
                    select(locator.c.patient_pseudonym).where(locator.c.org_id == org_id)
                ).scalars()
            )
            # a full list replaces what the organisation published under its newest key
            # version; what it published under an older one (before a rotation) is kept: nodes
            # publish the newest version only (so no list pairs a patient's two versions), and a
            # pull decided under the older one still finds the holders that knew the patient
            newest = newest_key_version(wanted)
            stale = {p for p in held - wanted if (pseudonym_key_version(p) or 0) >= newest}
            if replace and stale:
                gone = list(stale)
                for i in range(0, len(gone), 500):
                    conn.execute(
                        delete(locator).where(
                            locator.c.org_id == org_id,
                            locator.c.patient_pseudonym.in_(gone[i : i + 500]),
                        )
                    )
            new = [
                {"patient_pseudonym": p, "org_id": org_id, "published_at": now}
                for p in sorted(wanted - held)
            ]
            if new:
                conn.execute(insert(locator), new)
        return len(new)

    def held_count(self, org_id: str) -> int:
        with self._read.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(locator).where(locator.c.org_id == org_id)
                ).scalar_one()
            )

    def lookup(self, pseudonym: str, *, exclude: str = "") -> list[str]:
        with self._read.connect() as conn:
            holders: list[str] = list(
                conn.execute(
                    select(locator.c.org_id)
                    .where(locator.c.patient_pseudonym == pseudonym)
                    .order_by(locator.c.org_id)
                ).scalars()
            )
            return [h for h in holders if h != exclude]
