"""Consent storage: the current version of each patient's consents, by pseudonym.

Bodies are stored as FHIR JSON (validated on the way in by :func:`consent.fhir.from_fhir`); the
read path for decisions parses them back without re-running the FHIR model validation.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, update

from consent.fhir import from_fhir, to_fhir
from consent.model import ConsentRecord
from consent.schema import consent_epoch, consents
from servicekit.outcome import NotFound, PreconditionFailed
from servicekit.storage import upgrade_schema

__all__ = ["ConsentStore", "StoredConsent", "migrate", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def migrate(engine: Engine) -> None:
    upgrade_schema(engine, MIGRATIONS_DIR)


class StoredConsent:
    __slots__ = ("record", "version", "updated_at")

    def __init__(self, record: ConsentRecord, version: int, updated_at: datetime) -> None:
        self.record, self.version, self.updated_at = record, version, updated_at

    def resource(self) -> dict[str, Any]:
        body = to_fhir(self.record, version_id=str(self.version))
        body["meta"]["lastUpdated"] = self.updated_at.isoformat().replace("+00:00", "Z")
        return body


def _move_epoch(conn: Any) -> None:
    """In the transaction that writes a consent: whoever read the epoch before sees it moved."""
    moved = conn.execute(
        update(consent_epoch).where(consent_epoch.c.id == 1).values(epoch=consent_epoch.c.epoch + 1)
    )
    if moved.rowcount != 1:  # never silently unmoved: a missing row is created, already moved
        conn.execute(insert(consent_epoch).values(id=1, epoch=1))


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _load(row: Any) -> StoredConsent:
    record = from_fhir(json.loads(row.body), record_id=row.id, validated=True)
    return StoredConsent(record, int(row.version), _aware(row.updated_at))


class ConsentStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, record: ConsentRecord) -> StoredConsent:
        now = datetime.now(UTC)
        record = replace(record, id=uuid.uuid4().hex, date_time=record.date_time or now)
        with self.engine.begin() as conn:
            conn.execute(
                insert(consents).values(
                    id=record.id,
                    patient=record.patient,
                    status=record.status,
                    version=1,
                    body=json.dumps(to_fhir(record)),
                    created_at=now,
                    updated_at=now,
                )
            )
            _move_epoch(conn)
        return StoredConsent(record, 1, now)

    def get(self, consent_id: str) -> StoredConsent:
        with self.engine.connect() as conn:
            row = conn.execute(select(consents).where(consents.c.id == consent_id)).first()
        if row is None:
            raise NotFound(f"Consent/{consent_id} not found")
        return _load(row)

    def update(
        self, consent_id: str, record: ConsentRecord, *, if_match: int | None = None
    ) -> StoredConsent:
        """Replace a consent (same patient); optimistic concurrency on the version."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(consents.c.version, consents.c.patient).where(consents.c.id == consent_id)
            ).first()
            if row is None:
                raise NotFound(f"Consent/{consent_id} not found")
            if if_match is not None and if_match != row.version:
                raise PreconditionFailed(
                    f"Consent/{consent_id} is at version {row.version}, not {if_match}"
                )
            version = int(row.version) + 1
            record = replace(record, id=consent_id)
            result = conn.execute(
                update(consents)
                .where(consents.c.id == consent_id, consents.c.version == row.version)
                .values(
                    status=record.status,
                    version=version,
                    body=json.dumps(to_fhir(record)),
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise PreconditionFailed(f"Consent/{consent_id} changed concurrently; retry")
            _move_epoch(conn)
        return StoredConsent(record, version, now)

    def epoch(self) -> int:
        """The consent epoch now (see ``consent.schema.consent_epoch``)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(consent_epoch.c.epoch).where(consent_epoch.c.id == 1))
            return int(value.scalar_one_or_none() or 0)

    def for_patient(self, pseudonym: str) -> list[StoredConsent]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(consents)
                .where(consents.c.patient == pseudonym)
                .order_by(consents.c.created_at, consents.c.id)
            ).all()
        return [_load(r) for r in rows]

    def count(self) -> int:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(consents)).scalar_one())
