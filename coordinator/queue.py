"""The durable store-and-forward queue of sealed envelopes (SQLAlchemy; SQLite or PostgreSQL).

Life of an envelope: ``queued`` (committed before Send returns) → ``delivering`` (claimed under a
lease by one Inbox stream) → ``delivered`` / ``rejected`` (the recipient acknowledged; the sealed
bytes are dropped) — or ``dead`` (expired, consent withdrawn before delivery): the dead-letter
list. A lease that runs out (the stream died, the coordinator was killed) makes the envelope
claimable again, so an accepted envelope is redelivered until acknowledged.

Audited with the same commit: ``accept``, ``acknowledge`` and ``kill`` take ``also``, a write
(the routing audit's ledger entry) made inside the transaction that changes the envelope's state,
so the state change and its audit entry are durable together, in one commit, or not at all.

Replica-safe by design: every state change is a single conditional UPDATE or a claim made with
``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL) / ``BEGIN IMMEDIATE`` (SQLite), and leases carry
the claiming replica's id, so several coordinators can share one PostgreSQL queue.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.errors import ExchangeError
from coordinator.schema import envelopes, routing_log
from servicekit.storage import is_postgres, reader
from trust.envelopes import REQUEST_KINDS, EnvelopeHeader

__all__ = ["QueuedEnvelope", "EnvelopeState", "EnvelopeQueue", "FINAL_STATES", "Also"]

FINAL_STATES = frozenset({"delivered", "rejected", "dead"})
# A write made in the transaction of a state change, given the envelope's header (the audit).
Also = Callable[[Connection, EnvelopeHeader], None]


@dataclass(frozen=True)
class QueuedEnvelope:
    header: EnvelopeHeader
    sealed: bytes
    attempts: int


@dataclass(frozen=True)
class EnvelopeState:
    envelope_id: str
    kind: str
    sender: str
    recipient: str
    state: str
    reason: str
    attempts: int
    accepted_at: float
    updated_at: float


def _header(m: object) -> EnvelopeHeader:
    r = m._mapping  # type: ignore[attr-defined]
    return EnvelopeHeader.from_record(r)


class EnvelopeQueue:
    def __init__(self, engine: Engine, *, replica_id: str, lease_seconds: float = 30.0) -> None:
        self.engine = engine
        # reads take no write lock on SQLite (servicekit.storage.reader): they do not queue
        # behind the writers' durable commits
        self._read = reader(engine)
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._postgres = is_postgres(engine)

    # -- sending ------------------------------------------------------------------------------

    def accept(
        self,
        header: EnvelopeHeader,
        sealed: bytes,
        *,
        now: float | None = None,
        also: Also | None = None,
    ) -> bool:
        """Commit the envelope durably (``also`` in the same transaction). Returns False when
        this exact envelope was already accepted (idempotent retry; ``also`` is not called);
        the same id with different content is refused."""
        now = time.time() if now is None else now
        digest = hashlib.sha256(sealed).hexdigest()
        try:
            with self.engine.begin() as conn:
                existing = self._existing(conn, header.envelope_id)
                if existing is not None:
                    return self._retry(existing, header, digest)
                conn.execute(
                    insert(envelopes).values(
                        **header.to_record(),
                        sealed=sealed,
                        size=len(sealed),
                        digest=digest,
                        state="queued",
                        reason="",
                        attempts=0,
                        lease_owner=None,
                        lease_until=None,
                        accepted_at=now,
                        updated_at=now,
                    )
                )
                self._log(conn, header, "accepted", "", now)
                if also is not None:
                    also(conn, header)
        except IntegrityError:
            # Another replica inserted this id between our check and our insert (a retry sent
            # through another coordinator): answer exactly as for any retry.
            with self._read.connect() as conn:
                existing = self._existing(conn, header.envelope_id)
            if existing is None:
                raise
            return self._retry(existing, header, digest)
        return True

    @staticmethod
    def _existing(conn: Connection, envelope_id: str) -> Row[Any] | None:
        return conn.execute(
            select(envelopes.c.digest, envelopes.c.sender).where(
                envelopes.c.envelope_id == envelope_id
            )
        ).first()

    @staticmethod
    def _retry(existing: Row[Any], header: EnvelopeHeader, digest: str) -> bool:
        if existing.digest != digest or existing.sender != header.sender:
            raise ExchangeError(
                "ALREADY_EXISTS",
                f"envelope id {header.envelope_id} was already used for different content",
            )
        return False

    def sent_since(self, sender: str, since: float) -> int:
        with self._read.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(envelopes)
                    .where(envelopes.c.sender == sender, envelopes.c.accepted_at >= since)
                ).scalar_one()
            )

    def has_exchange(self, header: EnvelopeHeader) -> bool:
        """Is there a referral or consultation for this patient between the two organisations
        (either direction)? A Task status update may only travel along such an exchange."""
        with self._read.connect() as conn:
            row = conn.execute(
                select(envelopes.c.envelope_id)
                .where(
                    or_(
                        and_(
                            envelopes.c.sender == header.recipient,
                            envelopes.c.recipient == header.sender,
                        ),
                        and_(
                            envelopes.c.sender == header.sender,
                            envelopes.c.recipient == header.recipient,
                        ),
                    ),
                    envelopes.c.patient_pseudonym == header.patient_pseudonym,
                    envelopes.c.kind.in_(sorted(REQUEST_KINDS)),
                    envelopes.c.state.in_(["queued", "delivering", "delivered"]),
                )
                .limit(1)
            ).first()
        return row is not None

    # -- delivering ---------------------------------------------------------------------------

    def claim(
        self, recipient: str, *, limit: int, lease_owner: str, now: float | None = None
    ) -> list[QueuedEnvelope]:
        """Lease up to ``limit`` deliverable envelopes of ``recipient``, oldest first."""
        now = time.time() if now is None else now
        claimable = and_(
            envelopes.c.recipient == recipient,
            or_(
                envelopes.c.state == "queued",
                and_(envelopes.c.state == "delivering", envelopes.c.lease_until < now),
            ),
        )
        query = (
            select(envelopes.c.envelope_id)
            .where(claimable)
            .order_by(envelopes.c.accepted_at, envelopes.c.envelope_id)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            ids: list[str] = list(conn.execute(query).scalars())
            if not ids:
                return []
            conn.execute(
                update(envelopes)
                .where(envelopes.c.envelope_id.in_(ids), claimable)
                .values(
                    state="delivering",
                    lease_owner=lease_owner,
                    lease_until=now + self.lease_seconds,
                    attempts=envelopes.c.attempts + 1,
                    updated_at=now,
                )
            )
            rows = conn.execute(
                select(envelopes)
                .where(envelopes.c.envelope_id.in_(ids), envelopes.c.lease_owner == lease_owner)
                .order_by(envelopes.c.accepted_at, envelopes.c.envelope_id)
            ).all()
        return [QueuedEnvelope(_header(r), bytes(r.sealed), int(r.attempts)) for r in rows]

    @property
    def shared(self) -> bool:
        """Whether other replicas may write this queue (PostgreSQL); a SQLite queue is this
        process's own, so every envelope queued or released in it passes through this process."""
        return self._postgres

    def next_lease_expiry(self, recipient: str) -> float | None:
        """When the earliest lease on an envelope of ``recipient`` runs out (it is claimable
        again just after), or None when none is leased."""
        with self._read.connect() as conn:
            until = conn.execute(
                select(func.min(envelopes.c.lease_until)).where(
                    envelopes.c.recipient == recipient, envelopes.c.state == "delivering"
                )
            ).scalar()
        return None if until is None else float(until)

    def release(self, envelope_ids: Sequence[str], lease_owner: str) -> None:
        """Give back leases a stream holds but did not get acknowledged (stream closed)."""
        if not envelope_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(envelopes)
                .where(
                    envelopes.c.envelope_id.in_(list(envelope_ids)),
                    envelopes.c.state == "delivering",
                    envelopes.c.lease_owner == lease_owner,
                )
                .values(state="queued", lease_owner=None, lease_until=None)
            )

    def acknowledge(
        self,
        envelope_id: str,
        recipient: str,
        *,
        imported: bool,
        detail: str = "",
        also: Also | None = None,
    ) -> tuple[str, EnvelopeHeader | None]:
        """Final state after the recipient's acknowledgement; idempotent for repeated acks.
        Returns the state and, when this call changed it, the envelope's header (and ``also``
        was written with the change)."""
        now = time.time()
        state = "delivered" if imported else "rejected"
        with self.engine.begin() as conn:
            # Row lock on PostgreSQL so two replicas cannot both finalise it (SQLite: the
            # IMMEDIATE transaction already serialises writers).
            row = conn.execute(
                select(envelopes).where(envelopes.c.envelope_id == envelope_id).with_for_update()
            ).first()
            if row is None or row.recipient != recipient:
                # Same answer for "not yours" and "does not exist": no probing of ids.
                raise ExchangeError("NOT_FOUND", f"no envelope {envelope_id} addressed to you")
            if row.state in FINAL_STATES:
                return str(row.state), None
            conn.execute(
                update(envelopes)
                .where(envelopes.c.envelope_id == envelope_id)
                .values(
                    state=state,
                    reason=detail[:500],
                    sealed=b"",
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                )
            )
            header = _header(row)
            self._log(conn, header, state, detail[:500], now)
            if also is not None:
                also(conn, header)
        return state, header

    def kill(
        self,
        envelope_id: str,
        reason: str,
        *,
        now: float | None = None,
        also: Also | None = None,
    ) -> bool:
        """Move an envelope to the dead-letter list (sender sees the reason through Status),
        ``also`` in the same transaction. False when it was already final (nothing written)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            # Row lock on PostgreSQL so two replicas cannot both finalise it (SQLite: the
            # IMMEDIATE transaction already serialises writers).
            row = conn.execute(
                select(envelopes).where(envelopes.c.envelope_id == envelope_id).with_for_update()
            ).first()
            if row is None or row.state in FINAL_STATES:
                return False
            conn.execute(
                update(envelopes)
                .where(envelopes.c.envelope_id == envelope_id)
                .values(
                    state="dead",
                    reason=reason,
                    sealed=b"",
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                )
            )
            header = _header(row)
            self._log(conn, header, "dead", reason, now)
            if also is not None:
                also(conn, header)
        return True

    def expire(self, *, now: float | None = None, also: Also | None = None) -> list[str]:
        """Dead-letter every undelivered envelope past its expiry (``also`` with each); returns
        the ids this call moved."""
        now = time.time() if now is None else now
        with self._read.connect() as conn:
            ids: list[str] = list(
                conn.execute(
                    select(envelopes.c.envelope_id).where(
                        envelopes.c.state.in_(["queued", "delivering"]),
                        envelopes.c.expires_at <= now,
                    )
                ).scalars()
            )
        reason = "expired before delivery"
        return [i for i in ids if self.kill(i, reason, now=now, also=also)]

    # -- reading ------------------------------------------------------------------------------

    def state(self, envelope_id: str) -> EnvelopeState | None:
        with self._read.connect() as conn:
            row = conn.execute(
                select(envelopes).where(envelopes.c.envelope_id == envelope_id)
            ).first()
        if row is None:
            return None
        return EnvelopeState(
            envelope_id=row.envelope_id,
            kind=row.kind,
            sender=row.sender,
            recipient=row.recipient,
            state=row.state,
            reason=row.reason,
            attempts=int(row.attempts),
            accepted_at=float(row.accepted_at),
            updated_at=float(row.updated_at),
        )

    def header(self, envelope_id: str) -> EnvelopeHeader | None:
        with self._read.connect() as conn:
            row = conn.execute(
                select(envelopes).where(envelopes.c.envelope_id == envelope_id)
            ).first()
        return _header(row) if row is not None else None

    def depths(self) -> dict[str, dict[str, int]]:
        """Envelope counts per recipient and state."""
        with self._read.connect() as conn:
            rows = conn.execute(
                select(envelopes.c.recipient, envelopes.c.state, func.count()).group_by(
                    envelopes.c.recipient, envelopes.c.state
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for recipient, state, count in rows:
            out.setdefault(str(recipient), {})[str(state)] = int(count)  # type: ignore[call-overload]
        return out

    def dead_letters(self, limit: int = 100) -> list[EnvelopeState]:
        with self._read.connect() as conn:
            ids: list[str] = list(
                conn.execute(
                    select(envelopes.c.envelope_id)
                    .where(envelopes.c.state == "dead")
                    .order_by(envelopes.c.updated_at.desc())
                    .limit(limit)
                ).scalars()
            )
        return [s for s in (self.state(i) for i in ids) if s is not None]

    # -- routing log --------------------------------------------------------------------------

    def log_refusal(self, header: EnvelopeHeader, reason: str) -> None:
        with self.engine.begin() as conn:
            self._log(conn, header, "refused", reason, time.time())

    def recent(self, decision: str, limit: int = 20) -> list[dict[str, object]]:
        with self._read.connect() as conn:
            rows = conn.execute(
                select(routing_log)
                .where(routing_log.c.decision == decision)
                .order_by(routing_log.c.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    @staticmethod
    def _log(conn: object, header: EnvelopeHeader, decision: str, reason: str, now: float) -> None:
        conn.execute(  # type: ignore[attr-defined]
            insert(routing_log).values(
                at=now,
                envelope_id=header.envelope_id[:64],
                sender=header.sender[:64],
                recipient=header.recipient[:64],
                kind=header.kind[:32],
                decision=decision,
                reason=reason[:500],
            )
        )
