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

import httpx
import pytest
from coordinator_load import LoadRegion, create_database, drop_database

from node.exchange.client import ExchangeClient
from trust.pki import load_org

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


def _grpc_calls(base_url: str, method: str) -> float:
    """The replica's own count of ``method`` calls (its /metrics, ipjms_coordinator_grpc_*)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ipjms_coordinator_grpc_requests_total{") and f"{method}" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_nodes_grpc_calls_are_spread_over_two_replicas(
    tmp_path: Path, pg_pair: tuple[str, str]
) -> None:
    """Issue 22: "gRPC through a ClusterIP pins each stream to one coordinator replica". A node's
    ExchangeClient resolving two replicas (here an ``ipv4:`` target with both loopback ports, as
    a headless Service's DNS answer gives in the chart) balances per call (``round_robin``): 40
    directory calls land on both replicas, each served by its own process (its /metrics). With
    ``pick_first`` (gRPC's default) every call went to one replica (checked by mutation)."""
    queue_db, consent_db = pg_pair
    region = LoadRegion(tmp_path, consent_db, senders=1, recipients=1)
    calls = 40
    try:
        region.start()
        pair = region.start_coordinators(2, queue_db, "coordinators")
        target = "ipv4:" + ",".join(s.extra["address"] for s in pair)
        before = [_grpc_calls(s.base_url, "ListOrganisations") for s in pair]
        creds = load_org(region.orgs[region.sender_ids[0]])
        with ExchangeClient(target, creds, server_org="org-coordinator") as client:
            for _ in range(calls):
                assert client.organisations()  # the directory, from whichever replica
        after = [_grpc_calls(s.base_url, "ListOrganisations") for s in pair]
    finally:
        region.stop()
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == calls, served
    # round_robin alternates once both subchannels are ready; the first calls may all go to the
    # one that connected first, so "spread" is: each replica served at least a quarter
    assert min(served) >= calls / 4, served
