"""An idle Inbox stream sleeps until something can be claimed, not on a fixed short poll: the
notifier wakes it for every envelope queued or released in this process, and on the
coordinator's own (SQLite) queue it otherwise sleeps until the earliest lease of its recipient
runs out or its directory touch is due; on a shared (PostgreSQL) queue it still looks every
``poll_interval`` (other replicas' envelopes wake nothing here). The queue's own part is in
tests/exchange/test_exchange_queue.py; redelivery over real processes (3 s leases) in
tests/exchange/test_exchange_faults.py."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from coordinator.grpc_service import LEASE_SLACK, TOUCH_EVERY, ExchangeServicer
from trust.envelopes import EnvelopeHeader


def _header() -> EnvelopeHeader:
    return EnvelopeHeader.new(
        kind="referral",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym="rp-0123456789abcdef",
    )


class Queue:
    def __init__(self, items: list[Any], *, shared: bool = False) -> None:
        self.items, self.released, self.shared = items, [], shared
        self.lease_expiry: float | None = None

    def claim(self, *_: Any, **__: Any) -> list[Any]:
        items, self.items = self.items, []
        return items

    def release(self, ids: list[str], _owner: str) -> None:
        self.released.extend(ids)

    def next_lease_expiry(self, _recipient: str) -> float | None:
        return self.lease_expiry


def _servicer(queue: Queue, notified: list[str]) -> ExchangeServicer:
    services = SimpleNamespace(
        queue=queue,
        gate=SimpleNamespace(epoch_now=lambda: None),
        auditor=SimpleNamespace(record=lambda *_, **__: None),
        notifier=SimpleNamespace(
            notify=notified.append, generation=lambda _o: 0, wait=lambda *_: None
        ),
        directory=SimpleNamespace(touch=lambda *_: None),
        limits=SimpleNamespace(default_batch=10, poll_interval=1.0),
        peers=SimpleNamespace(identify=lambda _cert: SimpleNamespace(org_id="clinic-b")),
    )
    servicer = ExchangeServicer(services)  # type: ignore[arg-type]
    servicer._deliverable = lambda *_: True  # type: ignore[method-assign]
    return servicer


CONTEXT = SimpleNamespace(
    auth_context=lambda: {}, add_callback=lambda _f: None, is_active=lambda: True
)


def test_a_stream_closed_with_leases_wakes_the_recipients_other_streams() -> None:
    """What it held goes back to the queue, and a waiting stream of the same recipient is woken
    to take it (it no longer finds it only on its next look)."""
    items = [SimpleNamespace(header=_header(), sealed=b"sealed", attempts=1) for _ in range(2)]
    queue, notified = Queue(items), []
    stream = _servicer(queue, notified).Inbox(SimpleNamespace(max_batch=10, follow=True), CONTEXT)
    first = next(stream)
    stream.close()  # the receiver went away holding both leases
    assert queue.released == [first.header.envelope_id]
    assert notified == ["clinic-b"]


def test_an_idle_stream_on_its_own_queue_wakes_when_a_lease_runs_out() -> None:
    queue = Queue([])
    servicer = _servicer(queue, [])
    now = time.time()
    # nothing leased: until the directory touch is due
    wait = servicer._idle_wait("clinic-b", now)
    assert TOUCH_EVERY - 1 < wait <= TOUCH_EVERY
    # a lease running out in 2 s: just after it
    queue.lease_expiry = time.time() + 2.0
    wait = servicer._idle_wait("clinic-b", now)
    assert 1.0 < wait <= 2.0 + LEASE_SLACK
    # one already run out: at once (a short pause, never a busy loop)
    queue.lease_expiry = now - 1
    assert servicer._idle_wait("clinic-b", now) == LEASE_SLACK


def test_an_idle_stream_on_a_shared_queue_still_looks_every_poll_interval() -> None:
    queue = Queue([], shared=True)
    queue.lease_expiry = time.time() + 60  # not asked: other replicas' envelopes wake nothing
    wait = _servicer(queue, [])._idle_wait("clinic-b", time.time())
    assert 0 < wait <= 1.0
