"""The pseudonymisation authority as a real process (``ipjms pseudonym serve``) with a real PKI:
nodes get one pseudonym per identifier without holding a key; who may ask, how often, and what
its audit keeps (issue 23)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.launcher import Service, ipjms_command, start_service
from servicekit.storage import make_engine, sqlite_url
from trust import oprf
from trust.audit_ledger import AuditLedger
from trust.backend_auth import make_org_assertion
from trust.oprf_client import OprfPseudonyms, PseudonymServiceError
from trust.pki import init_ca, issue_org, load_org, revoke
from trust.pseudonym import oprf_input, oprf_pseudonym
from trust.pseudonym_keys import key_fingerprint, load_key_ring, rotate

NATIONAL = "https://ipjms.example.org/fhir/sid/national-id"
SSN = "http://hl7.org/fhir/sid/us-ssn"
ORGS = ("node-a", "node-b", "node-gone", "coordinator")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(ca)
    for org in ORGS:
        issue_org(ca, org, host="127.0.0.1")
    return {"ca": ca, **{o: ca / "orgs" / o for o in ORGS}}


def _start(tmp: Path, ca: Path, *extra: str, env: dict[str, str] | None = None) -> Service:
    return start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(tmp / "svc"), "--port", "0",
         "--ca-dir", str(ca), "--org-id", "authority",
         "--client", "node-a", "--client", "node-b", "--client", "node-gone", *extra],
        base_url="http://127.0.0.1:{http}", log_dir=tmp / "logs", ports_dir=tmp / "svc", env=env,
    )  # fmt: skip


@pytest.fixture
def service(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Service]:
    svc = _start(tmp_path, pki["ca"])
    try:
        yield svc
    finally:
        svc.stop()


def test_two_nodes_get_the_authority_pseudonym_without_a_key(
    service: Service, pki: dict[str, Path], tmp_path: Path
) -> None:
    a = OprfPseudonyms(service.base_url, load_org(pki["node-a"]))
    b = OprfPseudonyms(service.base_url, load_org(pki["node-b"]))
    ids = [(NATIONAL, "110101199003077777"), (SSN, "123-45-6789"), (NATIONAL, "123456789")]
    got_a, got_b = a.pseudonyms(ids), b.pseudonyms(list(reversed(ids)))
    assert got_a == list(reversed(got_b))  # the same patient, the same pseudonym, at any node
    assert len(set(got_a)) == 3  # an SSN and a national id with the same digits differ
    # ...and it is the OPRF of the authority's key (version 1), which no node holds
    ring = load_key_ring(tmp_path / "svc" / "oprf-keys", create=False)
    sk = ring.keys[1]
    assert got_a[0] == oprf_pseudonym(1, oprf.evaluate(sk, oprf_input(*ids[0])))
    assert all(p.startswith("v1.") for p in got_a)


def test_only_certified_clients_may_ask(service: Service, pki: dict[str, Path]) -> None:
    url = service.base_url + "/oprf/evaluate"
    body = {"blinded": [oprf.blind(b"x")[1].hex()]}
    assert httpx.post(url, json=body, timeout=30).status_code == 401  # no assertion
    coord = make_org_assertion(load_org(pki["coordinator"]), url)
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {coord}"}, timeout=30)
    assert r.status_code == 403 and "not a client" in r.text  # certified, but not a node
    node = make_org_assertion(load_org(pki["node-a"]), url)
    first = httpx.post(url, json=body, headers={"Authorization": f"Bearer {node}"}, timeout=30)
    again = httpx.post(url, json=body, headers={"Authorization": f"Bearer {node}"}, timeout=30)
    assert first.status_code == 200 and again.status_code == 401  # one use per assertion
    bad = httpx.post(
        url,
        json={"blinded": ["00" * 32]},  # the identity element
        headers={"Authorization": f"Bearer {make_org_assertion(load_org(pki['node-a']), url)}"},
        timeout=30,
    )
    assert bad.status_code == 400 and "invalid" in bad.text


def test_a_revoked_node_is_refused(service: Service, pki: dict[str, Path]) -> None:
    gone = OprfPseudonyms(service.base_url, load_org(pki["node-gone"]))
    assert gone.pseudonyms([(NATIONAL, "42")])
    revoke(pki["ca"], "node-gone")
    with pytest.raises(PseudonymServiceError, match="401"):
        gone.pseudonyms([(NATIONAL, "42")])


def test_rate_limited_per_organisation_and_audited_without_identifiers(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    svc = _start(tmp_path, pki["ca"], env={"IPJMS_PSEUDONYM_BUDGET_BURST": "5",
                                          "IPJMS_PSEUDONYM_BUDGET_PER_HOUR": "1"})  # fmt: skip
    try:
        a = OprfPseudonyms(service_url := svc.base_url, load_org(pki["node-a"]))
        b = OprfPseudonyms(service_url, load_org(pki["node-b"]))
        secret_ids = [(NATIONAL, f"11010119900307{i:04d}") for i in range(5)]
        assert len(a.pseudonyms(secret_ids)) == 5
        with pytest.raises(PseudonymServiceError, match="429.*budget"):
            a.pseudonyms([(NATIONAL, "110101199003079999")])
        assert b.pseudonyms([(NATIONAL, "110101199003079999")])  # another organisation's own
    finally:
        svc.stop()
    engine = make_engine(sqlite_url(tmp_path / "svc", "pseudonym"))
    ledger = AuditLedger(engine, create=False)
    assert ledger.verify().ok
    entries = [json.dumps(e.event) for e in ledger.entries()]
    outcomes = [json.loads(e)["outcomeDesc"] for e in entries]
    assert outcomes == ["evaluated", "refused: rate limit", "evaluated"]
    first = json.loads(entries[0])
    assert first["agent"][0]["who"]["identifier"]["value"] == "node-a"
    assert first["entity"][0]["detail"] == [{"type": "blinded-elements", "valueString": "5"}]
    text = "".join(entries) + (tmp_path / "logs" / "pseudonym.log").read_text()
    for _, value in [*secret_ids, (NATIONAL, "110101199003079999")]:
        assert value not in text


def test_rotation_makes_new_pseudonyms_and_keeps_the_old_version(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    svc = _start(tmp_path, pki["ca"])
    creds = load_org(pki["node-a"])
    try:
        v1 = OprfPseudonyms(svc.base_url, creds).pseudonyms([(NATIONAL, "7")])[0]
    finally:
        svc.stop()
    assert rotate(tmp_path / "svc" / "oprf-keys") == 2
    svc = _start(tmp_path, pki["ca"])
    try:
        client = OprfPseudonyms(svc.base_url, creds)
        v2 = client.pseudonyms([(NATIONAL, "7")])[0]
        assert v2.startswith("v2.") and v2[3:] != v1[3:]
        assert client.pseudonyms([(NATIONAL, "7")], version=1) == [v1]  # re-linking old to new
        with pytest.raises(PseudonymServiceError, match="version 9 is not held"):
            client.pseudonyms([(NATIONAL, "7")], version=9)
    finally:
        svc.stop()


def test_node_and_supernode_reach_an_https_authority_trusting_the_regional_ca_only(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """One client rule (trust.pseudonymiser.authority_pseudonymiser) for the node's web app and
    its SuperNode / ``ipjms fl score`` (federated.pseudonyms): the authority's HTTPS
    certificate is checked against the regional CA. Before, the SuperNode's client trusted the
    system roots and so could not reach a region's authority at all (and would trust any public
    CA's certificate for that name)."""
    from federated.pseudonyms import node_pseudonymiser
    from trust.pseudonymiser import authority_pseudonymiser

    server = pki["node-b"]  # any regional TLS certificate for 127.0.0.1
    svc = start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(tmp_path / "svc"), "--port", "0",
         "--ca-dir", str(pki["ca"]), "--org-id", "authority", "--client", "node-a",
         "--tls-cert", str(server / "tls.cert.pem"), "--tls-key", str(server / "tls.key.pem")],
        base_url="https://127.0.0.1:{http}", log_dir=tmp_path / "logs",
        ports_dir=tmp_path / "svc", wait=False,
    )  # fmt: skip
    try:
        ca_file = pki["ca"] / "ca.cert.pem"
        for _ in range(100):
            try:
                if httpx.get(svc.base_url + "/healthz", verify=str(ca_file)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        creds = load_org(pki["node-a"])
        ids = [(NATIONAL, "110101199003077777")]
        supernode = node_pseudonymiser(creds, pseudonym_url=svc.base_url).regional(ids)
        web_app = authority_pseudonymiser(svc.base_url, creds, ca_cert_file=ca_file).regional(ids)
        assert supernode == web_app and supernode[0].startswith("v1.")
        # the system roots alone do not know the regional CA
        with pytest.raises(PseudonymServiceError, match="unreachable.*CERTIFICATE_VERIFY_FAILED"):
            OprfPseudonyms(svc.base_url, creds).pseudonyms(ids)
    finally:
        svc.stop()


def _evaluate(url: str, creds, count: int) -> int:  # type: ignore[no-untyped-def]
    body = {"blinded": [oprf.blind(f"guess-{i}".encode())[1].hex() for i in range(count)]}
    auth = {"Authorization": f"Bearer {make_org_assertion(creds, url)}"}
    return httpx.post(url, json=body, headers=auth, timeout=30).status_code


def test_a_1000_candidate_burst_is_refused_ordinary_use_passes_and_a_restart_keeps_the_spend(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """The leak test's attacker knows a block of 1,000 candidates: with the default budget
    (derived from a node's new patients a day, trust/oprf_service.py) a node's credentials get
    at most DEFAULT_BUDGET_BURST of them at once, and a restart does not refill the bucket."""
    from trust.oprf_service import DEFAULT_BUDGET_BURST, MAX_BATCH

    assert DEFAULT_BUDGET_BURST < 1000 / 2  # the figure the test is about
    svc = _start(tmp_path, pki["ca"])
    a, b = load_org(pki["node-a"]), load_org(pki["node-b"])
    try:
        url = svc.base_url + "/oprf/evaluate"
        assert _evaluate(url, a, 1000) in (400, 413)  # more than a request may carry
        codes = [_evaluate(url, a, MAX_BATCH) for _ in range(1000 // MAX_BATCH)]
        granted = codes.count(200) * MAX_BATCH
        assert granted <= DEFAULT_BUDGET_BURST and codes[-1] == 429, codes
        # another node's ordinary use: one patient at a time, dozens of them
        ordinary = OprfPseudonyms(svc.base_url, b)
        for i in range(30):
            assert ordinary.pseudonyms([(NATIONAL, f"11010119900307{i:04d}")])
    finally:
        svc.stop()
    svc = _start(tmp_path, pki["ca"])  # the same data folder: the budget is in its database
    try:
        assert _evaluate(svc.base_url + "/oprf/evaluate", a, MAX_BATCH) == 429
    finally:
        svc.stop()


def test_a_long_running_node_moves_to_the_new_key_version_after_a_rotation(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """The node's cache is keyed by (key version, input): after the authority rotates, a node
    that stays up hands out the new version — learned from an answer, or from the authority's
    /healthz once ``version_ttl`` has passed — not the cached old one until it restarts."""
    import socket

    from trust.pseudonymiser import OprfPseudonymiser

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start() -> Service:
        return start_service(
            "pseudonym",
            ["pseudonym", "serve", "--data-dir", str(tmp_path / "svc"), "--port", str(port),
             "--ca-dir", str(pki["ca"]), "--org-id", "authority", "--client", "node-a"],
            base_url=f"http://127.0.0.1:{port}", log_dir=tmp_path / "logs",
            ports_dir=tmp_path / "svc",
        )  # fmt: skip

    creds = load_org(pki["node-a"])
    first, second = [(NATIONAL, "110101199003071111")], [(NATIONAL, "110101199003072222")]
    by_answer = OprfPseudonymiser(OprfPseudonyms(f"http://127.0.0.1:{port}", creds))
    by_health = OprfPseudonymiser(
        OprfPseudonyms(f"http://127.0.0.1:{port}", creds), version_ttl=0.0
    )
    svc = start()
    try:
        old = by_answer.regional(first)[0]
        assert old.startswith("v1.") and by_health.regional(first) == [old]
    finally:
        svc.stop()
    assert rotate(tmp_path / "svc" / "oprf-keys") == 2
    svc = start()
    try:
        assert by_health.regional(first)[0].startswith("v2.")  # re-read the current version
        assert by_answer.regional(first) == [old]  # within its ttl, nothing told it yet...
        assert by_answer.regional(second)[0].startswith("v2.")  # ...until an answer does
        new = by_answer.regional(first)[0]
        assert new.startswith("v2.") and new != old
        assert by_health.regional(first) == [new]
        assert by_answer.current_version() == 2
    finally:
        svc.stop()


def test_the_authority_publishes_key_fingerprints_and_refuses_to_re_make_a_lost_key(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Each key version's fingerprint (its public key, not the key) is in /healthz and in every
    answer. An authority whose database shows it has served, but whose key folder is empty (a
    lost volume), refuses to start instead of making a new v1 — as does rotate-key."""
    svc = _start(tmp_path, pki["ca"])
    try:
        ring = load_key_ring(tmp_path / "svc" / "oprf-keys", create=False)
        fingerprint = key_fingerprint(ring.keys[1])
        assert fingerprint == oprf.public_key(ring.keys[1]).hex() != ring.keys[1].hex()
        health = httpx.get(svc.base_url + "/healthz", timeout=30).json()
        assert health["key_fingerprints"] == {"1": fingerprint}
        url = svc.base_url + "/oprf/evaluate"
        token = make_org_assertion(load_org(pki["node-a"]), url)
        body = {"blinded": [oprf.blind(b"x")[1].hex()]}
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200 and r.json()["key_fingerprint"] == fingerprint
    finally:
        svc.stop()
    keys = tmp_path / "svc" / "oprf-keys"
    for path in keys.iterdir():
        path.unlink()  # the key folder is lost; the database (ledger, budgets) is not

    serve = subprocess.run(
        ipjms_command(
            "pseudonym", "serve", "--data-dir", str(tmp_path / "svc"), "--port", "0",
            "--ca-dir", str(pki["ca"]), "--client", "node-a",
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert serve.returncode == 2
    assert "key folder" in serve.stderr and "restore the folder" in serve.stderr
    assert "Traceback" not in serve.stderr
    assert list(keys.iterdir()) == []  # no new v1 was made
    rotated = subprocess.run(
        ipjms_command("pseudonym", "rotate-key", "--data-dir", str(tmp_path / "svc")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rotated.returncode == 1 and "no OPRF key" in rotated.stderr
    assert list(keys.iterdir()) == []


def _health(svc: Service) -> httpx.Response:
    return httpx.get(svc.base_url + "/healthz", timeout=30)


def test_healthz_answers_503_while_the_sqlite_database_cannot_be_opened(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Readiness asks the database: its SQLite file gone (a volume lost or not mounted) is a 503
    naming why — no path — with the key information kept; /livez still answers (an outage must
    not restart the authority); the file back, ready again without a restart. The file is moved
    away rather than made unreadable: the tests run as root, whom a chmod does not stop."""
    svc = _start(tmp_path, pki["ca"])
    db = tmp_path / "svc" / "pseudonym.db"
    try:
        ok = _health(svc)
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        keys = {k: ok.json()[k] for k in ("suite", "current_version", "key_fingerprints")}
        assert set(keys["key_fingerprints"]) == {"1"}
        db.rename(db.with_name("pseudonym.db.away"))
        down = _health(svc)
        assert down.status_code == 503, down.text
        assert down.json()["status"] == "unavailable"
        assert down.json()["reason"] == "the database file cannot be opened"
        assert {k: down.json()[k] for k in keys} == keys  # the public key info as before
        published = httpx.get(svc.base_url + "/keys", timeout=30)  # what nodes read: no database
        assert published.status_code == 200 and {k: published.json()[k] for k in keys} == keys
        assert str(tmp_path) not in down.text and "pseudonym.db" not in down.text
        assert httpx.get(svc.base_url + "/livez", timeout=30).status_code == 200
        db.with_name("pseudonym.db.away").rename(db)
        assert _health(svc).status_code == 200
        assert svc.alive()
    finally:
        svc.stop()


@pytest.mark.postgres
def test_healthz_answers_503_while_the_postgresql_database_refuses(
    tmp_path: Path, pki: dict[str, Path], pg_url: str
) -> None:
    """The same on PostgreSQL: no new connection admitted and every open one cut is a 503
    whose body names neither the database nor its server; once it admits connections again,
    ready without a restart."""
    import os

    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    admin_url = os.environ["IPJMS_TEST_POSTGRES_URL"].replace(
        "postgresql+psycopg://", "postgresql://"
    )

    def admin(sql: str, *params: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql, params)  # type: ignore[arg-type]

    svc = _start(tmp_path, pki["ca"], "--db", pg_url)
    try:
        assert _health(svc).status_code == 200
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)
        down = _health(svc)
        assert down.status_code == 503, down.text
        assert down.json()["reason"] == "the database does not answer"
        assert set(down.json()["key_fingerprints"]) == {"1"}
        published = httpx.get(svc.base_url + "/keys", timeout=30)
        assert published.status_code == 200
        assert published.json()["key_fingerprints"] == down.json()["key_fingerprints"]
        assert name not in down.text and "127.0.0.1:5432" not in down.text
        assert "postgres" not in down.text.lower()
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert _health(svc).status_code == 200
    finally:
        svc.stop()
        admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


class _CountingClient(OprfPseudonyms):
    """The real client, counting the evaluations it asks the authority for."""

    asked = 0

    def outputs(self, inputs, *, version=None):  # type: ignore[no-untyped-def]
        type(self).asked += len(inputs)
        return super().outputs(inputs, version=version)


def test_a_restarted_node_uses_its_stored_pseudonyms_while_the_authority_database_is_down(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """The authority's /healthz answers 503 while its database is down, but its key
    information is published on /keys, which asks no database: a restarted node (here a
    SuperNode's file store) learns the key fingerprints there and answers the patients it stored
    — regional and routing — asking the authority for nothing (before /keys: no fingerprint
    known, so nothing stored could be trusted, and the node asked the authority)."""
    from trust.pseudonym_store import open_file_store
    from trust.pseudonymiser import OprfPseudonymiser, store_key

    svc = _start(tmp_path, pki["ca"])
    db = tmp_path / "svc" / "pseudonym.db"
    creds = load_org(pki["node-a"])
    patient = [(NATIONAL, "110101199003073333")]
    try:
        first = OprfPseudonymiser(
            OprfPseudonyms(svc.base_url, creds),
            store=open_file_store(tmp_path / "node", store_key(creds)),
        )
        regional = first.regional(patient)
        routing = first.routing(regional[0], "node-a", "node-b")
        db.rename(db.with_name("pseudonym.db.away"))  # the authority's database is down
        assert _health(svc).status_code == 503

        _CountingClient.asked = 0
        restarted = OprfPseudonymiser(  # the node restarted: empty memory, its store kept
            _CountingClient(svc.base_url, creds),
            store=open_file_store(tmp_path / "node", store_key(creds)),
        )
        assert restarted.regional(patient) == regional
        assert restarted.routing(regional[0], "node-b", "node-a") == routing
        assert _CountingClient.asked == 0  # nothing asked of the authority
        assert _health(svc).status_code == 503  # still down: the store answered
        db.with_name("pseudonym.db.away").rename(db)
        assert _health(svc).status_code == 200
    finally:
        svc.stop()


def test_candidates_are_every_held_version_paid_once_per_patient_and_never_a_retired_one(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Issue 23, the registry after a rotation: a node offers the consent registry a patient's
    pseudonym under every key version the authority still holds, the current first. Each is the
    node's own evaluation, kept in its store: after a restart nothing is asked again, and a
    retired version is neither asked nor offered."""
    from trust.pseudonym_keys import retire
    from trust.pseudonym_store import open_file_store
    from trust.pseudonymiser import OprfPseudonymiser, store_key

    creds = load_org(pki["node-a"])
    key = store_key(creds)
    patient = (NATIONAL, "110101199003073333")
    asked: list[int | None] = []

    class Counted(OprfPseudonyms):  # the real client; only counts its evaluations
        def outputs(self, inputs, *, version=None):  # type: ignore[no-untyped-def]
            asked.append(version)
            return super().outputs(inputs, version=version)

    def node(svc: Service) -> OprfPseudonymiser:  # a (re)started node over the same store
        return OprfPseudonymiser(
            Counted(svc.base_url, creds), store=open_file_store(tmp_path / "n", key)
        )

    svc = _start(tmp_path, pki["ca"])
    try:
        (v1,) = node(svc).candidates(patient)
        assert v1.startswith("v1.") and asked == [None]
    finally:
        svc.stop()
    assert rotate(tmp_path / "svc" / "oprf-keys") == 2
    svc = _start(tmp_path, pki["ca"])
    try:
        asked.clear()
        v2, older = node(svc).candidates(patient)
        assert v2.startswith("v2.") and older == v1
        assert asked == [None]  # v2 asked once; v1 from the store
        asked.clear()
        assert node(svc).candidates(patient) == [v2, v1] and asked == []  # restart: nothing
        # a patient first met after the rotation: v2 asked, then v1 asked by number, once
        newcomer = (NATIONAL, "11010119850512002X")
        theirs = node(svc).candidates(newcomer)
        assert [p[:3] for p in theirs] == ["v2.", "v1."] and theirs[1] != v1
        assert asked == [None, 1]
        asked.clear()
        assert node(svc).candidates(newcomer) == theirs and asked == []  # kept across restart
    finally:
        svc.stop()
    retire(tmp_path / "svc" / "oprf-keys", 1)
    svc = _start(tmp_path, pki["ca"])
    try:
        asked.clear()
        assert node(svc).candidates(patient) == [v2] and asked == []
    finally:
        svc.stop()
