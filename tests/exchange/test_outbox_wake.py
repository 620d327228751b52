"""The node's outbox loop resends pending envelopes every 2 s while there are any; with none it
sleeps until a send leaves one pending (the coordinator unreachable) or its slow safety sweep
(one left by another worker process, or by a crash before a restart). The real-process test of
a referral made while the coordinator is down is in tests/exchange/test_exchange_faults.py."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from deploy.launcher import wait_until
from node.exchange import runner as runner_module
from node.exchange.egress import resend
from node.exchange.runner import ExchangeRunner
from trust.envelopes import EnvelopeHeader


class Unreachable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


@contextlib.contextmanager
def _untimed(*_: Any) -> Iterator[None]:
    yield


def test_a_send_left_pending_wakes_the_outbox_loop() -> None:
    def send(_sealed: Any) -> None:
        raise Unreachable()

    ctx = SimpleNamespace(client=SimpleNamespace(send=send), pending=threading.Event(),
                          timed=_untimed)  # fmt: skip
    header = EnvelopeHeader.new(kind="referral", sender="hosp-a", recipient="clinic-b",
                                patient_pseudonym="rp-0123456789abcdef")  # fmt: skip
    assert resend(ctx, SimpleNamespace(header=header)) == "pending"  # type: ignore[arg-type]
    assert ctx.pending.is_set()


class Sweeps:
    """An outbox table that is always empty, counting the loop's looks at it."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        self.count += 1
        yield SimpleNamespace(execute=lambda _q: SimpleNamespace(scalars=lambda: []))


def test_an_idle_outbox_loop_sleeps_until_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "OUTBOX_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(runner_module, "OUTBOX_IDLE_SECONDS", 3600.0)  # never, in this test
    engine = Sweeps()
    ctx = SimpleNamespace(engine=engine, pending=threading.Event())
    runner = ExchangeRunner(ctx)  # type: ignore[arg-type]
    thread = threading.Thread(target=runner._outbox_loop, daemon=True)
    thread.start()
    try:
        wait_until(lambda: engine.count >= 1, 30, 0.01, "the first sweep")
        seen = engine.count
        ctx.pending.set()  # what resend does when the coordinator is unreachable
        wait_until(lambda: engine.count > seen, 30, 0.01, "a sweep after the wake")
    finally:
        runner.stop_event.set()
        ctx.pending.set()
        thread.join(10)
    assert not thread.is_alive()
