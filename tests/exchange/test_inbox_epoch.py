"""Delivery re-asks the registry's consent epoch just before each envelope it hands over.

The Inbox stream resumes only when the receiver takes the previous envelope, which it may delay
at will. With the epoch asked once per claimed batch (as first built for issue 19), a revocation
written while the receiver held the stream was not seen for the rest of the batch: the second
envelope went out as "consents unchanged since routing". The registry is played by a small
oracle here (its epoch and $recheck), the queue and audit by in-memory stand-ins; the Inbox, the
consent gate and the routing-decision cache are the coordinator's own. The real-process test of
a revocation between routing and delivery is tests/exchange/test_exchange_e2e.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from coordinator.consent_gate import ConsentGate, GateDecision
from coordinator.grpc_service import ExchangeServicer
from trust.envelopes import EnvelopeHeader


class Registry:
    """The consent registry as the coordinator's gate sees it."""

    def __init__(self) -> None:
        self.epoch_value = 7
        self.revoked = False
        self.rechecks = 0

    def epoch(self) -> str:
        return str(self.epoch_value)

    def recheck(self, *_: Any, **__: Any) -> Any:
        self.rechecks += 1
        return SimpleNamespace(
            permit=not self.revoked,
            consent_ids=(),
            reason="consent revoked" if self.revoked else "permitted",
            break_glass=False,
            epoch=self.epoch(),
        )

    def decide(self, *_: Any, **__: Any) -> Any:  # never asked: every envelope is bound
        raise AssertionError("the gate must ask by envelope id")


def _header() -> EnvelopeHeader:
    return EnvelopeHeader.new(
        kind="referral",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym="rp-0123456789abcdef",
    )


class Queue:
    def __init__(self, items: list[Any]) -> None:
        self.items, self.killed, self.released = items, [], []
        self.headers = {i.header.envelope_id: i.header for i in items}

    def claim(self, *_: Any, **__: Any) -> list[Any]:
        items, self.items = self.items, []
        return items

    def kill(self, envelope_id: str, reason: str, *, also: Any = None) -> bool:
        self.killed.append((envelope_id, reason))
        if also is not None:  # the audit entry, written with the state change
            also(None, self.headers[envelope_id])
        return True

    def release(self, ids: list[str], _owner: str) -> None:
        self.released.extend(ids)

    def has_exchange(self, _header: Any) -> bool:
        return False


def _inbox(registry: Registry) -> tuple[ExchangeServicer, Queue, list[tuple[str, str, str]]]:
    items = [SimpleNamespace(header=_header(), sealed=b"sealed", attempts=1) for _ in range(2)]
    audit: list[tuple[str, str, str]] = []
    queue = Queue(items)
    services = SimpleNamespace(
        queue=queue,
        gate=ConsentGate(registry),
        auditor=SimpleNamespace(
            record=lambda h, state, why, _ids, **_: audit.append((h.envelope_id, state, why)),
            record_in=lambda _c, h, state, why, *_, **__: audit.append((h.envelope_id, state, why)),
        ),
        notifier=SimpleNamespace(
            notify=lambda _o: None, generation=lambda _o: 0, wait=lambda *_: None
        ),
        directory=SimpleNamespace(touch=lambda *_: None),
        limits=SimpleNamespace(default_batch=10, poll_interval=0.01),
        peers=SimpleNamespace(identify=lambda _cert: SimpleNamespace(org_id="clinic-b")),
    )
    servicer = ExchangeServicer(services)  # type: ignore[arg-type]
    for item in items:  # both routed under epoch 7
        servicer.routed.keep(
            item.header.envelope_id,
            GateDecision(True, "consent permits all declared classes", (), epoch="7"),
        )
    return servicer, queue, audit


CONTEXT = SimpleNamespace(
    auth_context=lambda: {}, add_callback=lambda _f: None, is_active=lambda: True
)


def test_a_revocation_while_the_receiver_holds_the_stream_stops_the_next_envelope() -> None:
    registry = Registry()
    servicer, queue, audit = _inbox(registry)
    stream = servicer.Inbox(SimpleNamespace(max_batch=10, follow=False), CONTEXT)
    first = next(stream)
    # The receiver holds the stream; meanwhile the patient revokes (the epoch moves with it).
    registry.revoked, registry.epoch_value = True, 8
    rest = list(stream)
    assert rest == [], "the second envelope was delivered on a decision the revocation ended"
    assert registry.rechecks == 1  # the moved epoch sent it to a full re-decision
    second = [a for a in audit if a[0] != first.header.envelope_id]
    assert [state for _, state, _ in second] == ["dead"]
    assert "consent revoked" in second[0][2]
    assert [k[0] for k in queue.killed] == [second[0][0]]


def test_with_consents_unchanged_each_envelope_goes_on_its_routing_decision() -> None:
    registry = Registry()
    servicer, _queue, audit = _inbox(registry)
    delivered = list(servicer.Inbox(SimpleNamespace(max_batch=10, follow=False), CONTEXT))
    assert len(delivered) == 2
    assert registry.rechecks == 0
    assert all(state == "delivered" and "epoch 7" in why for _, state, why in audit)
