"""Must-show 3 of issue 6: two coordinator processes sharing ONE PostgreSQL queue deliver every
envelope exactly once under concurrent load.

Real processes, real mutual TLS: three sender organisations (separate processes, 4 threads each)
split over the two coordinators; two recipient organisations each hold an Inbox stream on BOTH
coordinators, so the replicas compete for the same rows (``FOR UPDATE SKIP LOCKED`` claims). A
recipient verifies and decrypts every envelope it is handed (the import) and acknowledges it.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from coordinator_load import LoadRegion, create_database, drop_database

PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_pair() -> Iterator[tuple[str, str]]:
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    tag = uuid.uuid4().hex[:10]
    queue = create_database(PG_URL, f"ipjms_ops_queue_{tag}")
    consent = create_database(PG_URL, f"ipjms_ops_consent_{tag}")
    try:
        yield queue, consent
    finally:
        drop_database(PG_URL, queue)
        drop_database(PG_URL, consent)


def test_two_coordinators_share_one_queue_exactly_once(
    tmp_path: Path, pg_pair: tuple[str, str]
) -> None:
    queue_db, consent_db = pg_pair
    region = LoadRegion(tmp_path, consent_db, senders=3, recipients=2)
    try:
        region.start()
        pair = region.start_coordinators(2, queue_db, "coordinators")
        result = region.run_load(pair, queue_db, per_sender=80, threads=4)
    finally:
        region.stop()
    total = 3 * 80
    assert result.sender_errors == []
    assert len(result.sent) == len(set(result.sent)) == total
    delivered = Counter(d[0] for d in result.deliveries)
    # every accepted envelope reached its recipient, and none twice
    assert set(delivered) == set(result.sent)
    assert max(delivered.values()) == 1, [i for i, n in delivered.items() if n > 1][:5]
    assert result.bad_opens == 0  # each opened (signature + decryption) at its recipient
    assert set(result.acks.values()) == {"delivered"}
    assert result.queue_states == {"delivered": total}
    assert result.max_attempts == 1  # no lease was ever handed out twice
    # both replicas really delivered (the recipients drained both)
    by_replica = Counter(d[1] for d in result.deliveries)
    assert set(by_replica) == {0, 1}, by_replica
