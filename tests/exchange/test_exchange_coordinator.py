"""The coordinator as a real process over real mutual TLS: who may call, what it refuses, and
that a refused envelope leaves nothing in the queue (issue 4, must-show 2 and 5)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import subprocess
import uuid

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from exchange_net import Region, start_consent

from deploy.launcher import ipjms_command, wait_until
from node.exchange.client import ExchangeClient
from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from servicekit.storage import make_engine, sqlite_url
from trust.audit_ledger import AuditLedger
from trust.backend_auth import make_org_assertion
from trust.envelope_wire import header_to_pb
from trust.envelopes import EnvelopeHeader, seal, seal_to
from trust.pki import revoke

PSEUDO = "c0ffee" + "0" * 58


def _sealed(
    pki,
    sender="hosp-a",
    recipient="clinic-b",
    *,
    kind="referral",
    payload=b"{}",
    now=None,
    ttl=dt.timedelta(hours=1),
    region=None,
):
    """A hand-sealed envelope; with ``region``, a decision bound to it first (as a node asks
    before sealing) — without one the coordinator refuses it (issue 23)."""
    header = EnvelopeHeader.new(
        kind=kind,
        sender=sender,
        recipient=recipient,
        patient_pseudonym=PSEUDO,
        ttl=ttl,
        now=now,
    )
    if region is not None:
        assert region.bind(header, PSEUDO).permit
    if recipient in pki.creds:
        return seal_to(
            header,
            payload,
            sender=pki.creds[sender],
            recipient_encryption_cert_pem=pki.creds[recipient].encryption_cert_pem,
        )
    return seal(
        header,
        payload,
        sender_signing_key=pki.creds[sender].signing_key,
        recipient_encryption_public_key=x25519.X25519PrivateKey.generate().public_key(),
    )


def _queued(data_dir) -> int:
    db = sqlite_url(data_dir, "coordinator").removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from envelopes").fetchone()[0])


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_directory_and_locator_over_mtls(pki, start_coordinator) -> None:
    coord = start_coordinator()
    with (
        ExchangeClient(coord.address, pki.creds["hosp-a"]) as a,
        ExchangeClient(coord.address, pki.creds["clinic-b"]) as b,
    ):
        orgs = {o.org_id: o for o in a.organisations()}
        assert set(orgs) >= {"hosp-a", "clinic-b", "clinic-c", "authority"}
        assert orgs["clinic-b"].level == "community"
        assert orgs["clinic-b"].encryption_certificate == pki.creds["clinic-b"].encryption_cert_pem
        assert a.publish([PSEUDO, "1" * 64]) == 2
        assert b.publish([PSEUDO]) == 1
        # a lookup is a disclosure: without a consent registry to ask, it is refused (default
        # deny); consented lookups are in test_auth_hardening.py, the index in test_exchange_queue
        code, details = _code(lambda: b.lookup(PSEUDO, lookup_id=str(uuid.uuid4())))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "hosp-a" not in details
        code, _ = _code(lambda: a.organisation("nobody"))
        assert code == grpc.StatusCode.NOT_FOUND


def test_peers_refused(pki, start_coordinator) -> None:
    coord = start_coordinator()
    # a certificate from another CA (the client trusts our CA, so only the server can refuse):
    # the coordinator's TLS handshake rejects it — no RPC reaches the service
    impostor = dataclasses.replace(pki.foreign, ca_cert_pem=pki.creds["hosp-a"].ca_cert_pem)
    with ExchangeClient(coord.address, impostor, timeout=5) as foreign:
        code, details = _code(lambda: foreign.send(_sealed(pki)))
        # grpcio can only require-and-verify client certificates in the handshake, so the
        # refusal is the transport's (UNAVAILABLE), not an application status
        assert code == grpc.StatusCode.UNAVAILABLE, details
    # our CA, but not registered in the directory
    with ExchangeClient(coord.address, pki.creds["unregistered"]) as stranger:
        code, details = _code(lambda: stranger.organisations())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "not registered" in details
    assert _queued(coord.data_dir) == 0


def test_revoked_peer_refused(pki, start_coordinator, tmp_path) -> None:
    coord = start_coordinator()
    with ExchangeClient(coord.address, pki.creds["clinic-c"]) as c:
        assert c.organisations()
        revoke(pki.ca_dir, "clinic-c")
        code, details = _code(lambda: c.organisations())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in details


def test_bad_input_gets_clear_status_and_queues_nothing(pki, start_coordinator) -> None:
    coord = start_coordinator("--max-envelope-bytes", "4096")
    with ExchangeClient(coord.address, pki.creds["hosp-a"]) as a:
        good = _sealed(pki)
        # malformed: the clear header is fine, the sealed bytes are not an envelope
        bad = pb.Envelope(header=header_to_pb(good.header), sealed=b"not an envelope at all")
        code, details = _code(lambda: a.exchange.Send(bad, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details
        # clear header edited to disagree with the sealed one
        forged = header_to_pb(good.header)
        forged.kind = "consultation"
        code, details = _code(
            lambda: a.exchange.Send(pb.Envelope(header=forged, sealed=good.to_bytes()), timeout=10)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "disagrees" in details
        # no header at all
        code, _ = _code(lambda: a.exchange.Send(pb.Envelope(sealed=b"x"), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # unknown recipient
        code, details = _code(lambda: a.send(_sealed(pki, recipient="nobody")))
        assert code == grpc.StatusCode.NOT_FOUND and "nobody" in details
        # oversize
        code, details = _code(lambda: a.send(_sealed(pki, payload=b"x" * 10_000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4096" in details
        # expired
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        code, details = _code(lambda: a.send(_sealed(pki, now=past)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "expired" in details
        # a sender may not speak for another organisation
        code, _ = _code(lambda: a.send(_sealed(pki, sender="clinic-c")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # a status update with no exchange behind it
        code, _ = _code(lambda: a.send(_sealed(pki, kind="task-update")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # Status of an envelope that is not ours
        code, _ = _code(lambda: a.status(str(uuid.uuid4())))
        assert code == grpc.StatusCode.NOT_FOUND
    assert _queued(coord.data_dir) == 0


def test_no_consent_registry_means_refused_and_audited(pki, start_coordinator) -> None:
    coord = start_coordinator()  # no --consent-url: default deny
    with ExchangeClient(coord.address, pki.creds["hosp-a"]) as a:
        envelope = _sealed(pki)
        code, details = _code(lambda: a.send(envelope))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "consent" in details
    assert _queued(coord.data_dir) == 0
    ledger = AuditLedger(make_engine(sqlite_url(coord.data_dir, "coordinator")))
    events = [e.event for e in ledger.entries(patient_pseudonym=PSEUDO)]
    refused = [e for e in events if e["subtype"][0]["code"] == "refused"]
    assert refused and refused[-1]["entity"][1]["what"]["identifier"]["value"] == (
        envelope.header.envelope_id
    )
    assert ledger.verify().ok


def test_status_api_is_authority_only(pki, start_coordinator) -> None:
    coord = start_coordinator()
    status_url = f"{coord.http_url}/status"
    assert httpx.get(f"{coord.http_url}/healthz").status_code == 200
    r = httpx.get(status_url)
    assert r.status_code == 401
    assert json.loads(r.text)["resourceType"] == "OperationOutcome"
    # a hospital proves who it is, but is not the authority
    hosp = make_org_assertion(pki.creds["hosp-a"], status_url)
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {hosp}"}).status_code == 403
    # the authority: organisations, queue depths and recent refusals
    with ExchangeClient(coord.address, pki.creds["clinic-b"]) as b:
        b.organisations()
        with pytest.raises(grpc.RpcError):
            b.send(_sealed(pki, sender="clinic-b", recipient="hosp-a"))  # refused: no consent
    token = make_org_assertion(pki.creds["authority"], status_url)
    r = httpx.get(status_url, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {o["org_id"] for o in body["organisations"]} >= {"hosp-a", "clinic-b", "authority"}
    assert body["recent_refusals"] and body["recent_refusals"][0]["sender"] == "clinic-b"
    assert body["queue_depths"] == {}
    # an assertion is single-use
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_coordinator_on_postgresql(pki, start_coordinator, pg_url) -> None:
    coord = start_coordinator(db=pg_url)
    with ExchangeClient(coord.address, pki.creds["hosp-a"]) as a:
        assert a.publish([PSEUDO]) == 1
        code, _ = _code(lambda: a.lookup(PSEUDO, lookup_id=str(uuid.uuid4())))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            a.send(_sealed(pki))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ledger = AuditLedger(make_engine(pg_url))
    codes = [e.event["subtype"][0]["code"] for e in ledger.entries()]
    assert codes == ["lookup-refused", "refused"]


def test_rate_limit_duplicates_and_polling_inbox(pki, start_coordinator, tmp_path) -> None:
    """With a real consent registry: per-sender rate limit, idempotent retries that do not count,
    and a polling (non-following) inbox that drains and ends; acks are final."""
    consent_url, consent_service = start_consent(tmp_path / "region", pki)
    try:
        region = Region(tmp_path / "region", pki, consent_url, consent_service, None)
        region.grant(region.patient_token(PSEUDO), PSEUDO, {"clinic-b": ["Condition"]})
        coord = start_coordinator("--rate-per-minute", "3", consent_url=consent_url)
        with ExchangeClient(coord.address, pki.creds["hosp-a"]) as a:
            first = [_sealed(pki, region=region) for _ in range(3)]
            assert [a.send(e) for e in first] == [False, False, False]
            code, details = _code(lambda: a.send(_sealed(pki, region=region)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in details
            assert a.send(first[0]) is True  # a retry is answered, not rate-limited
        assert _queued(coord.data_dir) == 3
        with ExchangeClient(coord.address, pki.creds["clinic-b"]) as b:
            got = list(b.inbox(follow=False))
            assert sorted(e.header.envelope_id for e in got) == sorted(
                e.header.envelope_id for e in first
            )
            for e in got:
                assert b.acknowledge(e.header.envelope_id, imported=True) == "delivered"
            assert list(b.inbox(follow=False)) == []
            assert b.status(first[0].header.envelope_id).state == "delivered"
    finally:
        consent_service.stop()


LIFETIME = 15  # seconds


def test_undelivered_envelope_expires_into_the_dead_letters(
    pki, start_coordinator, tmp_path
) -> None:
    consent_url, consent_service = start_consent(tmp_path / "region", pki)
    try:
        region = Region(tmp_path / "region", pki, consent_url, consent_service, None)
        region.grant(region.patient_token(PSEUDO), PSEUDO, {"clinic-b": ["Condition"]})
        coord = start_coordinator(consent_url=consent_url)
        # long enough to pass Send (with its HTTP consent decision) on a loaded machine
        short = _sealed(pki, ttl=dt.timedelta(seconds=LIFETIME), region=region)
        with ExchangeClient(coord.address, pki.creds["hosp-a"]) as a:
            assert a.send(short) is False
            # nobody collects it; the coordinator's sweeper (every 5 s) dead-letters it after expiry
            wait_until(
                lambda: a.status(short.header.envelope_id).state == "dead",
                LIFETIME + 45,
                what="expiry",
            )
            assert dt.datetime.now(dt.UTC) >= short.header.expires_at  # not before its time
            assert "expired" in a.status(short.header.envelope_id).reason
        with ExchangeClient(coord.address, pki.creds["clinic-b"]) as b:
            assert list(b.inbox(follow=False)) == []
        listed = subprocess.run(
            ipjms_command("coordinator", "dead-letters", "--data-dir", str(coord.data_dir)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert short.header.envelope_id in listed and "expired" in listed
    finally:
        consent_service.stop()
