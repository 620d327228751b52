"""Must-show 1–3 end to end: a SuperLink and three SuperNodes as real processes with TLS and
SuperNode authentication, real nodes, a real consent registry and the coordinator's registry."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
from fl_net import NODES, FlNet, kill_group

from consent.client import ConsentClient
from federated.cohort import BackendTokenSource, ConsentEligibility, FhirCohortReader
from federated.egress import CONFIG_KEYS, METRIC_KEYS
from federated.registry_client import RegistryClient

# Whichever test runs first (any, under a shuffled order) may start the shared network (a
# region, three nodes, consents for 72 patients, a SuperLink and three SuperNodes; tests/conftest.py
# ``shared_fl_net``) inside its own time: ten minutes on a loaded machine; the scoring or logging
# test run first also trains the model.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture
def net(shared_fl_net: Any) -> FlNet:
    """The shared network, its SuperNodes keeping their state in the network's own folder (a test
    that needs them running calls ``ensure_supernode``, which restarts one another module left
    running on folders of its own)."""
    network: FlNet = shared_fl_net.get()
    network.use_supernodes_under(None)
    return network


@pytest.fixture
def all_supernodes(net: FlNet) -> None:
    """Every node's SuperNode running with the network's default policy, whatever an earlier
    test did to it (the fault test kills one; the refusal test restarts one with another
    policy)."""
    net.ensure_supernodes(NODES)


@pytest.fixture(scope="module")
def trained(shared_fl_net: Any) -> tuple[subprocess.CompletedProcess[str], dict]:
    """One completed 2-round run of the three nodes (its output and run file): the run test
    checks it, the scoring and logging tests need a model and Flower's output, in any order."""
    net: FlNet = shared_fl_net.get()
    net.use_supernodes_under(None)
    net.ensure_supernodes(NODES)
    label = "e2e-trained"
    proc = net.fl_run(
        "--rounds", "2", "--epsilon", "3", "--min-nodes", "3", "--round-timeout", "240",
        "--label", label,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert net.superlink_dir is not None
    return proc, json.loads((net.superlink_dir / "runs" / f"{label}.json").read_text())


def test_patients_without_research_consent_are_never_in_a_cohort(net: FlNet) -> None:
    org = "hosp-a"
    node = net.region.nodes[org]
    by_national_id = {
        i["value"]: p["id"]
        for p in node.search("Patient")
        for i in p.get("identifier", [])
        if i.get("value") in set(net.national_ids[org])
    }
    consent = ConsentClient(net.region.consent_url, net.pki.creds[org])
    reader = FhirCohortReader(
        node.url, BackendTokenSource(node.url, "fl-supernode", net.client_keys[org], "system/*.rs")
    )
    try:
        cohort = reader.cohort(ConsentEligibility(consent, net.region.pseudonymiser, "authority"))
    finally:
        reader.close()
        consent.close()
    consented_ids = {by_national_id[n] for n in net.consented[org]}
    refused_ids = set(by_national_id.values()) - consented_ids
    assert refused_ids, "the fixture must have patients without research consent"
    assert set(cohort.eligible_patient_ids) == consented_ids
    assert not {s.patient_id for s in cohort.samples} & refused_ids
    assert cohort.samples, "consented patients give samples"


def test_run_completes_and_model_lands_in_registry_with_card(net: FlNet, trained: tuple) -> None:
    proc, doc = trained
    assert "round 2/2" in proc.stdout
    assert doc["status"] == "completed" and doc["model_id"]
    registry = RegistryClient(net.region.coordinator.http_url, net.pki.creds["authority"])
    try:
        card = registry.card(doc["model_id"])
        weights = registry.weights(doc["model_id"])
        listed = registry.list("readmission-30d")
    finally:
        registry.close()
    assert doc["model_id"] in {m["id"] for m in listed}
    assert card["task"] == "readmission-30d" and card["feature_spec"] == "readmission-30d@1"
    assert card["rounds"] == 2 and card["strategy"] == "fedavg"
    assert sorted(p["org"] for p in card["participants"]) == sorted(NODES)
    for p in card["participants"]:
        assert p["cohort_size_rounded"] % 10 == 0 and p["cohort_size_rounded"] > 0
        assert 0 < p["epsilon"] <= 3.0 + 1e-6
        assert 0 < p["delta"] < 1 / p["cohort_size_rounded"] * 10
    # issue 21: the card states the unit, σ, q, steps, ε and δ per patient, and what DP leaves out
    privacy = card["privacy"]
    assert privacy["unit"] == "patient" and "does not cover" in privacy["not_covered"]
    for d in privacy["per_node"]:
        assert d["unit"] == "patient" and d["noise_multiplier"] > 0 and 0 < d["sample_rate"] <= 1
        assert d["steps"] > 0 and d["delta"] == 1e-5
        assert d["epsilon"] == pytest.approx(
            d["epsilon_training"] + d["epsilon_evaluation"], abs=2e-3
        )
    assert 0.0 <= card["evaluation"]["auroc"] <= 1.0 and "brier" in card["evaluation"]
    assert set(weights) == set(card["parameters"])
    for h in card["history"]:  # the deployment engine's round time vs the nodes' training time
        print(
            f"FLOWER-ROUND {h['round']}: wall {h['train_wall_seconds']:.2f}s, "
            f"summed local training {h['local_train_seconds']:.3f}s"
        )
    # What the nodes sent, as the server received it over the deployment engine:
    seen = doc["replies_seen"]
    assert {s["phase"] for s in seen} == {"train", "evaluate"}
    for s in seen:
        for arrays in s["arrays"].values():
            assert set(arrays) == set(card["parameters"])
        for keys in s["metrics"].values():
            assert set(keys) <= METRIC_KEYS
        for keys in s["configs"].values():
            assert set(keys) <= CONFIG_KEYS
        assert s["phase"] == "train" or not s["arrays"]  # evaluation replies carry no arrays


def test_quality_indicators_over_the_deployment_engine_count_only_hqualimp_patients(
    net: FlNet, tmp_path_factory: pytest.TempPathFactory, all_supernodes: None
) -> None:
    """Issue 18: HQUALIMP consents for some patients; the node-side loader keeps exactly those;
    ``ipjms fl indicators`` runs on the SuperLink and SuperNodes that train, every node charges
    its ledger, and the JSON carries ε, noise scales and intervals."""
    import sqlite3

    from fl_net import grant_quality

    from deploy.launcher import ipjms_command
    from federated.indicators.node_answer import load_patients

    quality: dict[str, set[str]] = {}
    for org in NODES:  # every third patient (research consent or not) consents to HQUALIMP
        quality[org] = set(net.national_ids[org][::3])
        for nid in quality[org]:
            grant_quality(net, nid)
    org = "hosp-a"
    node = net.region.nodes[org]
    node_config = {
        "source": "fhir", "fhir-url": node.url, "client-id": "fl-supernode",
        "client-key": str(net.client_keys[org]), "consent-url": net.region.consent_url,
        "authority": "authority", "org-dir": str(net.pki.org_dirs[org]),
        "pseudonym-url": net.region.pseudonym_service.base_url,
    }  # fmt: skip
    loaded = list(load_patients(node_config))
    counted = {
        i["value"] for p in loaded for i in p[0].get("identifier", []) if i.get("value")
    } & set(net.national_ids[org])
    assert counted == quality[org] and len(loaded) == len(quality[org])
    assert all(r.get("resourceType") != "Patient" for p in loaded for r in p[1:])

    out = tmp_path_factory.mktemp("indicators") / "indicators.json"
    args = [
        "fl", "indicators", "--data-dir", str(net.superlink_dir), "--out", str(out),
        "--epsilon", "1", "--min-nodes", "3", "--min-count", "2", "--from", "2000-01-01",
        "--strata", "sex", "--label", "e2e-indicators",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(ipjms_command(*args), capture_output=True, text=True, timeout=600)
    print(f"INDICATORS-RUN wall {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["format"] == "ipjms-quality-indicators/1"
    assert doc["privacy"]["epsilon_per_node"] == 1.0 and doc["privacy"]["delta"] == 0.0
    assert sorted(i["org"] for i in doc["institutions"]) == sorted(NODES)
    assert {i["status"] for i in doc["institutions"]} == {"ok"}
    for ind in doc["indicators"]:
        region = [c for c in ind["cells"] if c["scope"] == "region" and c["dimension"] == "all"]
        assert len(region) == 1 and region[0]["status"] in ("released", "suppressed")
        if region[0]["status"] == "released":
            assert region[0]["ci95"][0] <= region[0]["value"] <= region[0]["ci95"][1]
        assert ind["noise"]["numerator_scale"]["all"] > 0
    for org in NODES:
        db = net.supernode_dir(org) / "privacy_budget.db"
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "select epsilon, delta from fl_privacy_charges where kind = 'quality-indicators'"
            ).fetchall()
        assert rows == [(1.0, 0.0)]


def test_killed_supernode_run_finishes_with_others_then_below_minimum_fails(
    net: FlNet, all_supernodes: None
) -> None:
    """Leaves clinic-c's SuperNode dead; a later test that needs it restarts it
    (``all_supernodes`` / ``FlNet.ensure_supernode``)."""
    label = f"kill-{int(time.time())}"
    progress = net.superlink_dir / "runs" / f"{label}.log"
    # The round timeout bounds a round's wait for the killed node only until the SuperLink's
    # heartbeat check declares it unavailable; it must outlast a loaded machine's slowest answer.
    args = ["--rounds", "3", "--epsilon", "2", "--min-nodes", "2", "--round-timeout", "240",
            "--label", label]  # fmt: skip
    from deploy.launcher import ipjms_command, wait_until

    out_path = net.superlink_dir / "runs" / f"{label}.out"  # a file, not a pipe nobody reads yet
    out_path.parent.mkdir(parents=True, exist_ok=True)  # no earlier run made it when run alone
    with out_path.open("w") as out_file:
        proc = subprocess.Popen(
            ipjms_command("fl", "run", "--data-dir", str(net.superlink_dir),
                          "--registry-url", net.region.coordinator.http_url,
                          "--authority-dir", str(net.pki.org_dirs["authority"]), *args),
            stdout=out_file, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        # Round 1 done, or the run already ended (then the assertion below shows its output).
        wait_until(
            lambda: proc.poll() is not None
            or (progress.exists() and "round 1/3" in progress.read_text()),
            600, 0.5, "round 1",
        )  # fmt: skip
        assert proc.poll() is None, out_path.read_text()[-3000:]
        kill_group(net.supernodes["clinic-c"], signal.SIGKILL)
        proc.wait(timeout=900)
    finally:  # a failed or timed-out test leaves no `ipjms fl run` polling a stopped SuperLink
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = out_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    doc = json.loads((net.superlink_dir / "runs" / f"{label}.json").read_text())
    card = doc["card"]
    assert sorted(p["org"] for p in card["participants"]) == ["clinic-b", "clinic-c", "hosp-a"]
    took_all = {p["org"]: p["rounds"] for p in card["participants"]}
    assert took_all["hosp-a"] == [1, 2, 3] and took_all["clinic-b"] == [1, 2, 3]
    assert 3 not in took_all["clinic-c"]
    assert "clinic-c" in {d["org"] for d in card["dropped"]}
    # Now only two SuperNodes are left: a run that needs three fails and says why.
    failed = net.fl_run(
        "--rounds",
        "1",
        "--epsilon",
        "1",
        "--min-nodes",
        "3",
        "--node-wait",
        "5",
        "--round-timeout",
        "30",
    )
    assert failed.returncode == 1
    assert "needs at least 3" in failed.stdout or "the run needs at least 3" in failed.stdout, (
        failed.stdout[-2000:]
    )


def test_registry_rules_and_scoring_store_risk_assessments(net: FlNet, trained: tuple) -> None:
    from federated.registry_client import RegistryError
    from federated.scoring import MODEL_SYSTEM

    model_id = trained[1]["model_id"]
    node_reader = RegistryClient(net.region.coordinator.http_url, net.pki.creds["hosp-a"])
    try:
        assert node_reader.card(model_id)["feature_spec"] == "readmission-30d@1"  # nodes may read
        with pytest.raises(RegistryError, match="403"):  # only the authority stores models
            node_reader.publish({"task": "x"}, {"w": __import__("numpy").zeros(2)})
    finally:
        node_reader.close()
    node = net.region.nodes["hosp-a"]
    args = [
        "fl", "score", "--node-url", node.url, "--model", model_id,
        "--registry-url", net.region.coordinator.http_url,
        "--org-dir", str(net.pki.org_dirs["hosp-a"]),
        "--client-id", "fl-supernode", "--client-key", str(net.client_keys["hosp-a"]),
        "--pseudonym-url", net.region.pseudonym_service.base_url, "--top", "3",
        "--data-dir", str(net.supernode_dir("hosp-a")),  # the SuperNode's pseudonym store
    ]  # fmt: skip
    from deploy.launcher import ipjms_command

    first = subprocess.run(ipjms_command(*args), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "pseudonym" in first.stdout
    stored = node.search("RiskAssessment")
    assert stored, first.stdout
    for ra in stored:
        assert ra["method"]["coding"][0] == {
            "system": MODEL_SYSTEM, "code": model_id, "display": "federated readmission-30d model"
        }  # fmt: skip
        assert 0.0 <= ra["prediction"][0]["probabilityDecimal"] <= 1.0
        assert ra["basis"][0]["reference"].startswith("Encounter/")
    again = subprocess.run(ipjms_command(*args), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert len(node.search("RiskAssessment")) == len(stored)  # idempotent per model and discharge
    store = net.supernode_dir("hosp-a") / "pseudonyms.db"  # the SuperNode's, shared (0600)
    assert store.exists() and store.stat().st_mode & 0o777 == 0o600


def test_flower_services_log_json_lines_without_phi(net: FlNet, trained: tuple) -> None:
    """The SuperLink's and SuperNodes' supervisors log like every service (one JSON object per
    line, trust/logging_setup.py) — Flower's own output and its app processes' included — and no
    patient's name or national id appears (after at least the trained run; whatever other tests
    ran before on the shared network logged into the same files)."""
    secrets = [v for org in NODES for v in (*net.national_ids[org], *net.names[org])]
    assert secrets
    services = [net.superlink, *net.supernodes.values()]
    flower_records = 0
    for service in services:
        assert service is not None
        text = service.log_path.read_text()
        for secret in secrets:
            assert secret not in text, f"a patient's name or id in {service.name}'s log"
        for line in text.splitlines():
            if line.strip():
                entry = json.loads(line)  # every line is one JSON object
                assert {"ts", "level", "service", "logger", "msg"} <= entry.keys(), line
                flower_records += entry["logger"].startswith("flower.")
    assert flower_records > 0  # Flower's output went through the supervisor's pipe


def test_real_supernodes_decline_a_spent_budget_and_a_too_small_cohort(net: FlNet) -> None:
    """The node's own refusals, by SuperNode processes over the deployment engine (the
    in-process grid shows the same in test_training_rules.py): clinic-b's ledger already holds
    earlier releases up to 0.5 below its ε budget, so a run asking ε = 1 is declined and
    nothing is charged; clinic-c runs with a minimum cohort above its consented patients. The
    run goes on with hosp-a and the card says who declined and why."""
    import sqlite3
    import uuid

    from federated.budget import PrivacyBudgetLedger
    from servicekit.storage import make_engine

    budget = 100.0  # FlNet.start_supernode's default
    net.ensure_supernodes(
        {"hosp-a": (5, budget), "clinic-b": (5, budget), "clinic-c": (1000, budget)}
    )
    db = net.supernode_dir("clinic-b") / "privacy_budget.db"
    earlier = f"earlier-releases-{uuid.uuid4().hex}"
    engine = make_engine(f"sqlite:///{db}")
    try:
        ledger = PrivacyBudgetLedger(engine, budget, 1e-4)
        ledger.charge(earlier, budget - 0.5 - ledger.used(), 0.0, kind="test-earlier")
        assert ledger.used() == pytest.approx(budget - 0.5)
        label = f"refusals-{uuid.uuid4().hex[:8]}"
        proc = net.fl_run(
            "--rounds", "1", "--epsilon", "1", "--min-nodes", "1", "--round-timeout", "240",
            "--label", label,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        used_after, runs_after = ledger.used(), [e.label for e in ledger.entries()]
    finally:
        engine.dispose()
        with sqlite3.connect(db) as conn:  # the next test finds clinic-b's budget as it was
            conn.execute("delete from fl_privacy_charges where run_id = ?", (earlier,))
    assert net.superlink_dir is not None
    card = json.loads((net.superlink_dir / "runs" / f"{label}.json").read_text())["card"]
    assert [p["org"] for p in card["participants"]] == ["hosp-a"], card["participants"]
    assert used_after == pytest.approx(budget - 0.5)  # the declined run charged nothing
    assert label not in runs_after
    reasons = {d["org"]: d["reason"] for d in card["declined"]}
    assert reasons.keys() == {"clinic-b", "clinic-c"}, card["declined"]
    assert reasons["clinic-b"] == (
        f"privacy budget spent: used {budget - 0.5:.2f} of {budget:.2f} (this run asks for ε=1.00)"
    )
    assert reasons["clinic-c"].startswith("cohort too small: about ")
    assert reasons["clinic-c"].endswith(" eligible patients, this node needs at least 1000")
