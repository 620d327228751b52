"""The directory of organisations the authority registered (database I/O, no gRPC).

An organisation is known by its id (the one in its certificate subject), its level, endpoints,
public keys (encryption and signing) and the SHA-256 fingerprints of its certificates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, insert, select, update

from coordinator.schema import organisations
from servicekit.storage import reader

__all__ = ["LEVELS", "OrgRecord", "Directory", "ONLINE_WINDOW"]

LEVELS = frozenset({"tertiary", "county", "community", "authority"})
ONLINE_WINDOW = 20.0  # seconds since last inbox activity that still counts as online


@dataclass
class OrgRecord:
    org_id: str
    name: str
    level: str
    endpoints: list[dict[str, str]] = field(default_factory=list)
    encryption_certificate: bytes = b""
    signing_certificate: bytes = b""
    cert_fingerprints: list[str] = field(default_factory=list)
    revoked: bool = False
    last_seen: float | None = None

    def online(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.last_seen is not None and now - self.last_seen <= ONLINE_WINDOW


def _record(row: object) -> OrgRecord:
    m = row._mapping  # type: ignore[attr-defined]
    return OrgRecord(
        org_id=m["org_id"],
        name=m["name"],
        level=m["level"],
        endpoints=json.loads(m["endpoints"]),
        encryption_certificate=bytes(m["encryption_certificate"]),
        signing_certificate=bytes(m["signing_certificate"]),
        cert_fingerprints=json.loads(m["cert_fingerprints"]),
        revoked=bool(m["revoked"]),
        last_seen=m["last_seen"],
    )


class Directory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # reads take no write lock on SQLite (servicekit.storage.reader): they do not queue
        # behind the writers' durable commits
        self._read = reader(engine)

    def register(self, org: OrgRecord) -> None:
        """Insert or replace an organisation (the authority's registration)."""
        if org.level not in LEVELS:
            raise ValueError(f"unknown level {org.level!r}; expected one of {sorted(LEVELS)}")
        values = {
            "name": org.name,
            "level": org.level,
            "endpoints": json.dumps(org.endpoints),
            "encryption_certificate": org.encryption_certificate,
            "signing_certificate": org.signing_certificate,
            "cert_fingerprints": json.dumps(sorted({f.lower() for f in org.cert_fingerprints})),
            "revoked": org.revoked,
        }
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(organisations.c.org_id).where(organisations.c.org_id == org.org_id)
            ).first()
            if exists:
                conn.execute(
                    update(organisations)
                    .where(organisations.c.org_id == org.org_id)
                    .values(**values)
                )
            else:
                conn.execute(
                    insert(organisations).values(
                        org_id=org.org_id, registered_at=time.time(), **values
                    )
                )

    def set_revoked(self, org_id: str, revoked: bool = True) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(organisations)
                .where(organisations.c.org_id == org_id)
                .values(revoked=revoked)
            )
            return bool(result.rowcount)

    def get(self, org_id: str) -> OrgRecord | None:
        with self._read.connect() as conn:
            row = conn.execute(
                select(organisations).where(organisations.c.org_id == org_id)
            ).first()
        return _record(row) if row else None

    def list(self, level: str = "") -> list[OrgRecord]:
        query = select(organisations).order_by(organisations.c.org_id)
        if level:
            query = query.where(organisations.c.level == level)
        with self._read.connect() as conn:
            return [_record(r) for r in conn.execute(query)]

    def touch(self, org_id: str, now: float | None = None) -> None:
        """Record inbox activity (the organisation is online)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(organisations)
                .where(organisations.c.org_id == org_id)
                .values(last_seen=time.time() if now is None else now)
            )
