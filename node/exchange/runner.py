"""Background work of the exchange while the node runs (threads; gRPC is synchronous):

- **inbox**: a streaming Inbox call; every envelope is handled and acknowledged. When the stream
  breaks the runner reconnects with exponential back-off (0.2 s doubling to 10 s); after three
  failed streams in a row it also polls (a draining, non-following Inbox call) on each attempt.
- **outbox**: re-sends envelopes the coordinator has not accepted yet (same envelope id), every
  2 s while any is pending; with none it sleeps until a send leaves one pending in this process,
  or 10 s (one left by another worker process of the node, or by a crash before the restart).
- **locator**: publishes this node's patient pseudonyms now and then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from sqlalchemy import select

from node.exchange.context import ExchangeContext
from node.exchange.egress import resend
from node.exchange.inbound import handle_envelope
from node.exchange.service import answer_query, publish_pseudonyms
from node.exchange.tables import outbound
from trust.envelopes import SealedEnvelope

__all__ = ["ExchangeRunner", "backoff_delays"]

log = logging.getLogger("ipjms.node.exchange")
OUTBOX_RETRY_SECONDS = 2.0  # between sweeps while envelopes are pending
OUTBOX_IDLE_SECONDS = 10.0  # between sweeps with none pending and no send left one pending


def backoff_delays(initial: float = 0.2, maximum: float = 10.0) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * 2)


class ExchangeRunner:
    def __init__(self, ctx: ExchangeContext, *, publish_every: float = 30.0) -> None:
        self.ctx = ctx
        self.publish_every = publish_every
        self.stop_event = threading.Event()
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()

    def start(self) -> None:
        for name, target in (
            ("exchange-inbox", self._inbox_loop),
            ("exchange-outbox", self._outbox_loop),
            ("exchange-locator", self._locator_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        self.ctx.pending.set()  # wakes an idle outbox loop
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- inbox ----------------------------------------------------------------------------------

    def _process(self, envelope: Any) -> None:
        handled = handle_envelope(self.ctx, envelope.sealed)
        h = envelope.header
        with self.ctx.timed("in", "ack"):  # the coordinator records the outcome
            self.ctx.client.acknowledge(
                h.envelope_id, imported=handled.imported, detail=handled.detail
            )
        log.info(
            "envelope %s (%s from %s): %s",
            h.envelope_id,
            h.kind,
            h.sender,
            "imported" if handled.imported else "rejected",
        )
        if handled.query is not None:
            answer_query(self.ctx, h.sender, handled.patient or "", handled.query)

    def drain_once(self) -> int:
        """Polling: fetch and handle everything queued now; returns how many envelopes."""
        count = 0
        for envelope in self.ctx.client.inbox(follow=False):
            self._process(envelope)
            count += 1
        return count

    def _inbox_loop(self) -> None:
        delays = backoff_delays()
        failures = 0
        while not self.stop_event.is_set():
            try:
                if failures >= 3:
                    self.drain_once()
                self._stream = self.ctx.client.inbox(follow=True)
                self.connected.set()
                for envelope in self._stream:
                    failures, delays = 0, backoff_delays()
                    self._process(envelope)
                    if self.stop_event.is_set():
                        break
            except grpc.RpcError as exc:
                if self.stop_event.is_set():
                    return
                failures += 1
                self.connected.clear()
                log.warning("inbox stream lost (%s); reconnecting", exc.code().name)
            except Exception as exc:  # keep the loop alive; the envelope stays queued
                failures += 1
                log.error("inbox handling failed: %s", type(exc).__name__)
            finally:
                # Close this stream so the coordinator releases its unacknowledged leases now.
                if self._stream is not None:
                    self._stream.cancel()
            self.stop_event.wait(next(delays))

    # -- outbox and locator -------------------------------------------------------------------

    def _outbox_loop(self) -> None:
        while not self.stop_event.wait(OUTBOX_RETRY_SECONDS):
            self.ctx.pending.clear()  # a send left pending from now on wakes the next wait
            pending: list[bytes] = []
            try:
                with self.ctx.engine.connect() as conn:
                    pending = list(
                        conn.execute(
                            select(outbound.c.sealed).where(
                                outbound.c.state == "pending", outbound.c.sealed.is_not(None)
                            )
                        ).scalars()
                    )
                for raw in pending:
                    try:
                        resend(self.ctx, SealedEnvelope.from_bytes(raw))
                    except Exception as exc:  # refused: recorded by resend
                        log.info("pending envelope not sent: %s", type(exc).__name__)
            except Exception as exc:
                log.warning("outbox sweep failed: %s", type(exc).__name__)
                continue
            if not pending:
                self.ctx.pending.wait(OUTBOX_IDLE_SECONDS)

    def _locator_loop(self) -> None:
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                count = publish_pseudonyms(self.ctx)
                log.info("published %d pseudonyms to the record locator", count)
                delay = self.publish_every
            except Exception as exc:
                log.warning("locator publish failed: %s", type(exc).__name__)
                delay = min(self.publish_every, delay * 2)
            self.stop_event.wait(delay)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return self.connected.wait(max(0.0, deadline - time.monotonic()))
