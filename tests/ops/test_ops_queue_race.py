"""Two coordinator replicas accepting the SAME envelope at the same moment (a sender retrying
through the other replica behind a load balancer) on one PostgreSQL queue.

Deterministic interleaving: replica A has inserted the envelope but not committed; replica B's
existence check sees nothing, its INSERT waits on the primary key, A commits, B's INSERT fails.
B must answer like any retry — "already accepted" (False), or ALREADY_EXISTS when the id was used
for different content — never a raw database error (which reached the sender as gRPC UNKNOWN
with psycopg's message).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, text

from coordinator.errors import ExchangeError
from coordinator.queue import EnvelopeQueue
from coordinator.server import open_database
from deploy.launcher import wait_until
from trust.envelopes import EnvelopeHeader

pytestmark = pytest.mark.postgres


class _HeldCommit:
    """An engine whose ``begin()`` runs the statements, then holds the commit until released."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.written = threading.Event()
        self.release = threading.Event()

    @contextmanager
    def begin(self) -> Iterator[Any]:
        with self.engine.begin() as conn:
            yield conn
            self.written.set()
            assert self.release.wait(30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def _header() -> EnvelopeHeader:
    return EnvelopeHeader.new(kind="referral", sender="hosp-a", recipient="clinic-b",
                              patient_pseudonym="ab" * 32, ttl=dt.timedelta(hours=1))  # fmt: skip


def _race(pg_url: str, sealed_a: bytes, sealed_b: bytes) -> tuple[Any, Any]:
    engine = open_database(pg_url)
    held = _HeldCommit(engine)
    replica_a = EnvelopeQueue(engine, replica_id="a")
    replica_a.engine = held  # type: ignore[assignment]
    replica_b = EnvelopeQueue(open_database(pg_url), replica_id="b")
    header = _header()
    results: dict[str, Any] = {}

    def run(name: str, queue: EnvelopeQueue, sealed: bytes) -> None:
        try:
            results[name] = queue.accept(header, sealed)
        except Exception as exc:  # recorded and asserted on below
            results[name] = exc

    a = threading.Thread(target=run, args=("a", replica_a, sealed_a))
    a.start()
    assert held.written.wait(30)
    b = threading.Thread(target=run, args=("b", replica_b, sealed_b))
    b.start()

    def b_waits_on_a() -> bool:  # B's INSERT blocks on A's uncommitted key
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND datname = current_database()")
                ).scalar()
            )  # fmt: skip

    wait_until(b_waits_on_a, 30, what="replica B to wait on replica A's insert")
    held.release.set()
    a.join(30)
    b.join(30)
    depth = replica_b.depths()
    assert depth == {"clinic-b": {"queued": 1}}  # one queue entry whatever happened
    return results["a"], results["b"]


def test_same_envelope_through_both_replicas_is_a_duplicate_not_an_error(pg_url: str) -> None:
    first, second = _race(pg_url, b"sealed", b"sealed")
    assert first is True
    assert second is False, repr(second)


def test_same_id_different_content_through_the_other_replica_is_refused(pg_url: str) -> None:
    first, second = _race(pg_url, b"sealed", b"other content")
    assert first is True
    assert isinstance(second, ExchangeError) and second.code == "ALREADY_EXISTS", repr(second)
