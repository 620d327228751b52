"""The coordinator's durable queue on SQLite and PostgreSQL: idempotent accept, leases,
redelivery after a lost lease, acknowledgement, expiry and dead letters."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid

import pytest
from sqlalchemy import text

from coordinator.errors import ExchangeError
from coordinator.locator import RecordLocator
from coordinator.queue import EnvelopeQueue
from coordinator.server import open_database
from trust.envelopes import EnvelopeHeader

PSEUDO = "ab" * 32


def _header(recipient: str = "clinic-b", kind: str = "referral", ttl: int = 3600) -> EnvelopeHeader:
    return EnvelopeHeader.new(
        kind=kind,
        sender="hosp-a",
        recipient=recipient,
        patient_pseudonym=PSEUDO,
        ttl=dt.timedelta(seconds=ttl),
    )


@pytest.fixture
def queue(db_url: str) -> EnvelopeQueue:
    return EnvelopeQueue(open_database(db_url), replica_id="r1", lease_seconds=30)


def test_accept_is_idempotent_and_conflicting_reuse_refused(queue: EnvelopeQueue) -> None:
    h = _header()
    assert queue.accept(h, b"sealed-1") is True
    assert queue.accept(h, b"sealed-1") is False
    with pytest.raises(ExchangeError) as err:
        queue.accept(h, b"different")
    assert err.value.code == "ALREADY_EXISTS"
    assert queue.depths() == {"clinic-b": {"queued": 1}}


def test_claim_lease_ack_and_redelivery(queue: EnvelopeQueue) -> None:
    first, second = _header(), _header()
    queue.accept(first, b"one", now=time.time() - 1)
    queue.accept(second, b"two")
    claimed = queue.claim("clinic-b", limit=10, lease_owner="s1")
    assert [c.header.envelope_id for c in claimed] == [first.envelope_id, second.envelope_id]
    assert [c.sealed for c in claimed] == [b"one", b"two"]
    # leased: another stream gets nothing until the lease runs out
    assert queue.claim("clinic-b", limit=10, lease_owner="s2") == []
    assert queue.acknowledge(first.envelope_id, "clinic-b", imported=True)[0] == "delivered"
    # an acknowledged envelope is final; repeated acks are harmless
    state, changed = queue.acknowledge(first.envelope_id, "clinic-b", imported=True)
    assert (state, changed) == ("delivered", None)
    # lease expiry → the unacknowledged one is delivered again, attempt 2
    later = time.time() + 31
    again = queue.claim("clinic-b", limit=10, lease_owner="s3", now=later)
    assert [(c.header.envelope_id, c.attempts) for c in again] == [(second.envelope_id, 2)]
    # released leases come back at once
    queue.release([second.envelope_id], "s3")
    assert [c.header.envelope_id for c in queue.claim("clinic-b", limit=1, lease_owner="s4")] == [
        second.envelope_id
    ]


def test_only_the_recipient_may_acknowledge(queue: EnvelopeQueue) -> None:
    h = _header()
    queue.accept(h, b"x")
    with pytest.raises(ExchangeError) as err:
        queue.acknowledge(h.envelope_id, "someone-else", imported=True)
    assert err.value.code == "NOT_FOUND"


def _stored_sealed(queue: EnvelopeQueue, envelope_id: str) -> bytes:
    with queue.engine.connect() as conn:
        return bytes(
            conn.execute(
                text("select sealed from envelopes where envelope_id = :id"), {"id": envelope_id}
            ).scalar_one()
        )


def test_expiry_moves_to_dead_letters_and_drops_ciphertext(queue: EnvelopeQueue) -> None:
    h = _header(ttl=2)
    ciphertext = b"sealed-ciphertext-" + uuid.uuid4().bytes
    queue.accept(h, ciphertext)
    assert _stored_sealed(queue, h.envelope_id) == ciphertext
    assert queue.expire(now=time.time() + 5) == [h.envelope_id]
    assert _stored_sealed(queue, h.envelope_id) == b""  # the sealed bytes are gone
    state = queue.state(h.envelope_id)
    assert state is not None and state.state == "dead" and "expired" in state.reason
    assert queue.claim("clinic-b", limit=5, lease_owner="s", now=time.time() + 6) == []
    assert [d.envelope_id for d in queue.dead_letters()] == [h.envelope_id]


def test_task_update_needs_a_prior_exchange(queue: EnvelopeQueue) -> None:
    referral = _header()
    queue.accept(referral, b"x")
    back = dataclasses.replace(
        referral,
        envelope_id=str(uuid.uuid4()),
        kind="task-update",
        sender="clinic-b",
        recipient="hosp-a",
    )
    assert queue.has_exchange(back)
    stranger = dataclasses.replace(back, sender="clinic-c")
    assert not queue.has_exchange(stranger)


def test_locator_publish_replace_and_lookup(db_url: str) -> None:
    locator = RecordLocator(open_database(db_url))
    p1, p2 = "1" * 64, "2" * 64
    assert locator.publish("hosp-a", [p1, p2]) == 2
    assert locator.publish("hosp-a", [p1, p2]) == 0
    locator.publish("clinic-b", [p1])
    assert locator.lookup(p1, exclude="clinic-b") == ["hosp-a"]
    locator.publish("hosp-a", [p2], replace=True)
    assert locator.lookup(p1) == ["clinic-b"]
    with pytest.raises(ExchangeError):
        locator.publish("hosp-a", ["not-a-pseudonym"])


def test_next_lease_expiry_is_the_earliest_lease_of_the_recipient(queue: EnvelopeQueue) -> None:
    """An idle Inbox stream on this process's own queue sleeps until this (its other wake-ups
    come from the notifier), so it must be the first moment one of the recipient's envelopes
    is claimable again."""
    assert queue.shared is queue.engine.dialect.name.startswith("postgres")
    assert queue.next_lease_expiry("clinic-b") is None
    first, second, other = _header(), _header(), _header("clinic-c")
    for h in (first, second, other):
        queue.accept(h, b"sealed")
    now = time.time()
    queue.claim("clinic-c", limit=1, lease_owner="s0", now=now - 20)  # not clinic-b's
    assert queue.next_lease_expiry("clinic-b") is None
    queue.claim("clinic-b", limit=1, lease_owner="s1", now=now)
    queue.claim("clinic-b", limit=1, lease_owner="s2", now=now - 10)
    expiry = queue.next_lease_expiry("clinic-b")
    assert expiry == pytest.approx(now - 10 + 30)
    # claimable just after it, not before
    assert queue.claim("clinic-b", limit=5, lease_owner="s3", now=expiry) == []
    assert len(queue.claim("clinic-b", limit=5, lease_owner="s3", now=expiry + 0.01)) == 1
    queue.acknowledge(first.envelope_id, "clinic-b", imported=True)
    queue.acknowledge(second.envelope_id, "clinic-b", imported=True)
    assert queue.next_lease_expiry("clinic-b") is None


def test_a_state_change_and_its_audit_entry_are_one_commit(queue: EnvelopeQueue) -> None:
    """Issue 19: accept, acknowledge and kill write the routing audit's ledger entry inside
    their own transaction (``also``): one durable commit per step instead of two, and never
    the state change without its entry — if the entry cannot be written, the change is not
    either (the sender or recipient is told and retries)."""
    from sqlalchemy import event

    from coordinator.routing_audit import RoutingAuditor
    from trust.audit_ledger import AuditLedger

    ledger = AuditLedger(queue.engine)
    auditor = RoutingAuditor(ledger)
    commits: list[int] = []
    event.listen(queue.engine, "commit", lambda _conn: commits.append(1))

    def audit(decision: str):  # type: ignore[no-untyped-def]
        return lambda conn, header: auditor.record_in(conn, header, decision, "why")

    def decisions() -> list[str]:
        return [e.event["subtype"][0]["code"] for e in ledger.entries()]

    h, dead = _header(), _header()
    assert queue.accept(h, b"sealed", also=audit("accepted"))
    assert queue.accept(dead, b"sealed", also=audit("accepted"))
    assert len(commits) == 2  # old code: four (queue, then ledger, for each)
    assert queue.accept(h, b"sealed", also=audit("accepted")) is False  # retry: no entry
    assert decisions() == ["accepted", "accepted"]

    queue.claim("clinic-b", limit=10, lease_owner="s1")
    commits.clear()

    def broken(conn, header):  # type: ignore[no-untyped-def]
        auditor.record_in(conn, header, "imported", "why")
        raise RuntimeError("the ledger write failed")

    with pytest.raises(RuntimeError):
        queue.acknowledge(h.envelope_id, "clinic-b", imported=True, also=broken)
    assert queue.state(h.envelope_id).state == "delivering"  # type: ignore[union-attr]
    assert decisions() == ["accepted", "accepted"]  # the entry went with the rollback
    assert commits == []

    commits.clear()
    state, changed = queue.acknowledge(
        h.envelope_id, "clinic-b", imported=True, also=audit("imported")
    )
    assert (state, changed is not None) == ("delivered", True)
    assert queue.kill(dead.envelope_id, "consent withdrawn", also=audit("dead"))
    assert len(commits) == 2  # one per step, each with its entry
    assert queue.kill(dead.envelope_id, "again", also=audit("dead")) is False  # already final
    assert decisions() == ["accepted", "accepted", "imported", "dead"]
    assert ledger.verify().ok
