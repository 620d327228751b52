"""Demo chapter: federated readmission models with DP across the three demo nodes.

``start`` runs the regional authority's Flower SuperLink (TLS from the regional PKI, SuperNode
authentication) and admits the three nodes' SuperNodes (their CA-certified signing keys);
``net.facts["federated"]`` records its data dir and Fleet address.

``run`` (nodes are up and seeded): each node gets a research cohort (synthetic older, sicker
patients so that each site has readmissions to learn from) whose patients consent to HRESCH
for the authority, a backend client for its SuperNode, and its SuperNode (``ipjms fl
supernode``), each under its own privacy policy (DP required, at most ε = 3 per run, δ = 1e-5).
Then ``ipjms fl run`` trains 5 rounds (``--fl-rounds``) with patient-level DP-SGD (ε = 3 per
patient per node: training plus one DP evaluation), printing ε per node each round and, after
the last, the DP evaluation and each node's σ, q and steps; the model goes to the coordinator's
registry with its card; each node's patients are scored (RiskAssessment stored at the node). The
nodes' risk-model gate (node/care/model_gate.py, at the care settings' cited floor: federated
AUROC ≥ 0.70 over ≥ 100 outcome events) judges the card: a model it admits has its highest-risk
patients listed by pseudonym; a gated-out one — the demo's, trained on 30 patients a node — is
printed as not for clinical use with the reason, no list, and the community nodes' care workers
label its scores not-for-clinical-use (counted here).
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization

from consent.client import ConsentClient
from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from deploy.demo.network import AUTHORITY_ORG, DemoNetwork
from deploy.demo.pseudonym_authority import pseudonymiser
from deploy.launcher import free_port, ipjms_command, wait_healthy, wait_until
from federated.cohort import COHORT_CLASSES
from federated.indicators.node_answer import INDICATOR_CLASSES
from node.care.model_gate import LABEL_SYSTEM, MODEL_SYSTEM, NOT_FOR_CLINICAL_USE, ModelFloor, gate
from node.feeds.synthetic import generate_site
from node.identity import NATIONAL_ID_SYSTEM
from node.settings import CareSettings
from trust.pki import load_org
from trust.tokens import SigningKey

__all__ = ["start", "run"]

RESEARCH_PATIENTS = 30  # per node, tertiary-like profile (each enrols: ~1 s apiece)
RESEARCH_SEED = 5000
CLIENT_ID = "fl-supernode"
PASSWORD = "demo research consent"  # noqa: S105 - demo patients' registry password
SCORING_STEP = "Scoring: every node's patients scored"  # the step's title begins so, either way


def _ipjms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ipjms_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "140", **(env or {})},
        timeout=1800,
    )


def start(net: DemoNetwork) -> None:
    pki = net.facts["pki"]
    data_dir = net.service_dir("superlink")
    port, fleet, control = free_port(), free_port(), free_port()
    args = [
        "fl", "superlink", "--data-dir", str(data_dir),
        "--org-dir", str(pki["orgs"][AUTHORITY_ORG]),
        "--port", str(port), "--fleet-port", str(fleet), "--control-port", str(control),
        *[a for org, *_ in net.node_specs for a in ("--authorize", str(pki["orgs"][org]))],
    ]  # fmt: skip
    net.start("superlink", args, base_url=f"http://127.0.0.1:{port}")
    admitted = data_dir / "supernodes.json"
    wait_until(
        lambda: admitted.exists() and len(json.loads(admitted.read_text())) == len(net.node_specs),
        90,
        0.5,
        "SuperNodes to be admitted",
    )
    net.facts["federated"] = {"data_dir": data_dir, "fleet": f"127.0.0.1:{fleet}"}
    net.urls["Flower SuperLink (Fleet API, TLS)"] = f"127.0.0.1:{fleet}"


def _research_cohort(net: DemoNetwork, org: str, index: int) -> list[str]:
    node = net.nodes[org]
    env = {**net.facts.get("node_env", {}), **net.facts.get("node_env_by_org", {}).get(org, {})}
    seed = RESEARCH_SEED + index
    r = _ipjms("node", "seed", "--data-dir", str(node.data_dir), "--profile", "tertiary",
               "--patients", str(RESEARCH_PATIENTS), "--seed", str(seed), env=env)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"seeding the research cohort at {org} failed: {r.stdout[-500:]}")
    ids = []
    for bundle in generate_site("tertiary", RESEARCH_PATIENTS, seed):
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "Patient":
                ids += [i["value"] for i in res["identifier"] if i["system"] == NATIONAL_ID_SYSTEM]
    return ids


def _consent_research(net: DemoNetwork, org: str, national_ids: list[str]) -> int:
    """Each patient's consent permits HRESCH (research) to the authority; all but every fifth
    also permit HQUALIMP (quality indicators, chapter_indicators) in the same consent."""
    url = net.facts["consent_url"]
    # the node's pseudonyms, as it obtains them from the authority (one batch)
    pseudonyms = pseudonymiser(net, org).regional([(NATIONAL_ID_SYSTEM, n) for n in national_ids])
    client = ConsentClient(url, load_org(net.facts["pki"]["orgs"][org]))
    patients = httpx.Client(base_url=url, timeout=30)  # one session for every patient's calls
    granted = 0
    try:
        for index, pseudo in enumerate(pseudonyms):
            code = client.create_enrolment_code(pseudo)["code"]
            r = patients.post("/enrol", json={"code": code, "password": PASSWORD})
            if r.status_code != 201:
                continue  # already enrolled from an earlier demo run in the same workdir
            r = patients.post(
                "/auth/patient-token",
                data={"username": r.json()["username"], "password": PASSWORD},
            )
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            permit = Provision(
                "permit",
                actors=frozenset({AUTHORITY_ORG}),
                purposes=frozenset({"HRESCH"}),
                classes=frozenset(COHORT_CLASSES),
            )
            permits = [permit]
            if index % 5 != 4:
                permits.append(
                    Provision(
                        "permit",
                        actors=frozenset({AUTHORITY_ORG}),
                        purposes=frozenset({"HQUALIMP"}),
                        classes=frozenset(INDICATOR_CLASSES),
                    )
                )
            body = to_fhir(
                ConsentRecord("x", pseudo, "active", Provision("deny", provisions=tuple(permits)))
            )
            del body["id"]
            r = patients.post("/fhir/Consent", json=body, headers=headers)
            granted += r.status_code == 201
    finally:
        patients.close()
        client.close()
    return granted


def _prepare_research(net: DemoNetwork, index: int, org: str) -> tuple[str, list[str], int, Path]:
    """One node's research cohort, its patients' HRESCH consents and the SuperNode's client."""
    ids = _research_cohort(net, org, index)
    granted = _consent_research(net, org, ids)
    return org, ids, granted, _backend_client(net, org)


def _backend_client(net: DemoNetwork, org: str) -> Path:
    node = net.nodes[org]
    key_path = net.service_dir(f"supernode-{org}") / "fl-client.pem"
    if not key_path.exists():
        key = SigningKey.generate("ES256", kid=CLIENT_ID)
        key_path.write_bytes(
            key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pub = key_path.with_suffix(".pub.pem")
        pub.write_bytes(key.public_pem())
        env = {**net.facts.get("node_env", {}), **net.facts.get("node_env_by_org", {}).get(org, {})}
        r = _ipjms("node", "client", "add", "--data-dir", str(node.data_dir), "--client-id",
                   CLIENT_ID, "--public-key", str(pub),
                   "--scope", "system/*.rs system/RiskAssessment.c", env=env)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(
                f"registering the SuperNode client at {org} failed: {r.stdout[-400:]}"
            )
    return key_path


def run(net: DemoNetwork) -> None:
    fed = net.facts["federated"]
    pki = net.facts["pki"]
    with net.step("Research cohorts: HRESCH/HQUALIMP consents, one SuperNode per node") as notes:
        orgs = [org for org, *_rest in net.node_specs]
        # Each node's cohort, consents and backend client are prepared in parallel (short-lived
        # subprocesses and HTTP calls only); the SuperNodes, long-lived children, are started
        # from this thread: they die with the thread that started them (trust/processes.py).
        with ThreadPoolExecutor(max_workers=len(orgs)) as pool:
            prepared = list(pool.map(lambda job: _prepare_research(net, *job), enumerate(orgs)))
        supernodes = []
        for org, ids, granted, key_path in prepared:
            port = free_port()
            args = [
                "fl", "supernode", "--data-dir", str(net.service_dir(f"supernode-{org}")),
                "--superlink", fed["fleet"], "--org-dir", str(pki["orgs"][org]),
                "--fhir-url", net.nodes[org].url, "--client-id", CLIENT_ID,
                "--client-key", str(key_path), "--consent-url", net.facts["consent_url"],
                "--authority", AUTHORITY_ORG, "--pseudonym-url", net.facts["pseudonym_url"],
                "--port", str(port), "--min-cohort", "10", "--epsilon-budget", "10",
            ]  # fmt: skip
            supernodes.append(
                net.start(f"supernode-{org}", args, base_url=f"http://127.0.0.1:{port}", wait=False)
            )
            notes.append(
                f"{org}: {len(ids)} research patients, {granted} new HRESCH consents "
                "(4 in 5 also HQUALIMP), SuperNode up"
            )
        for service in supernodes:  # all three start together; each must come up
            wait_healthy(service, timeout=90)
    coordinator_http = net.facts["coordinator"]["status_url"].rsplit("/status", 1)[0]
    rounds = net.fl_rounds
    title = f"Federated training: {rounds} rounds, FedAvg, patient-level DP-SGD, ε=3 per patient"
    with net.step(title) as notes:
        r = _ipjms(
            "fl", "run", "--data-dir", str(fed["data_dir"]), "--rounds", str(rounds),
            "--epsilon", "3",
            "--min-nodes", "3", "--round-timeout", "300",
            "--registry-url", coordinator_http, "--authority-dir", str(pki["orgs"][AUTHORITY_ORG]),
        )  # fmt: skip
        notes += [line for line in r.stdout.splitlines() if line.strip()][-30:]
        if r.returncode != 0:
            raise RuntimeError("the federated run failed")
        notes.append(
            "(ε is per patient — all of a patient's discharges together — at each node: "
            "training plus one evaluation released under DP, charged to the node's own ledger; "
            "each node enforces its own policy whatever the server asks)"
        )
        notes.append(
            f"(a demo-sized cohort: {RESEARCH_PATIENTS} research patients per node, so each "
            "held-out split has a handful of readmissions and its AUROC — released with "
            "Laplace noise — is mostly noise; "
            "bench/federated.py measures the model on thousands of discharges per site — "
            "see federated/README.md)"
        )
        runs = sorted(
            (Path(fed["data_dir"]) / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime
        )
        doc = json.loads(runs[-1].read_text())
        model_id = doc["model_id"]
        net.facts["federated"]["model_id"] = model_id
    card = doc.get("card") or {}
    floor = CareSettings()  # the nodes' risk-model gate, at its cited defaults
    verdict = gate(model_id, card, ModelFloor(floor.model_min_auroc, floor.model_min_events))
    title = (
        f"{SCORING_STEP}; the published model flags high-risk patients"
        if verdict.clinical_use
        else f"{SCORING_STEP} — NOT FOR CLINICAL USE (risk-model gate)"
    )
    with net.step(title) as notes:
        notes.append(f"risk-model gate (node/care/model_gate.py), model {model_id}:")
        notes.append(f"  {verdict.reason}")
        care_orgs = {org for org, env in net.facts.get("node_env_by_org", {}).items()
                     if env.get("IPJMS_NODE_CARE__MODEL_REGISTRY_URL")}  # fmt: skip
        for org, *_rest in net.node_specs:
            key_path = net.service_dir(f"supernode-{org}") / "fl-client.pem"
            top = "3" if verdict.clinical_use else "0"  # no "highest-risk" list from a gated model
            r = _ipjms(
                "fl", "score", "--node-url", net.nodes[org].url, "--model", model_id,
                "--registry-url", coordinator_http, "--org-dir", str(pki["orgs"][org]),
                "--client-id", CLIENT_ID, "--client-key", str(key_path),
                "--pseudonym-url", net.facts["pseudonym_url"], "--top", top,
                # the SuperNode's folder: its pseudonym store (pseudonyms.db) answers the
                # patients it already met, so scoring asks the authority only for the others
                "--data-dir", str(net.service_dir(f"supernode-{org}")),
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"scoring at {org} failed: {r.stdout[-400:]}")
            notes.append(f"{org}:")
            notes += [f"  {line.strip()}" for line in r.stdout.splitlines() if line.strip()]
            if not verdict.clinical_use and org in care_orgs:
                try:
                    n = _labelled_scores(net.nodes[org].url, key_path, model_id)
                except (httpx.HTTPError, TimeoutError) as exc:
                    notes.append(f"  (the care worker's labels could not be counted: {exc})")
                else:
                    notes.append(
                        f"  {n} of them labelled not-for-clinical-use by the node's care worker "
                        "(meta.tag; the reason in a note): no alert, no patient shown as high risk"
                    )
        if not verdict.clinical_use:
            notes.append(
                "(the scores are kept for research; a node's doctors see no alert and no "
                "'highest-risk' list from this model until a card shows the floor is met)"
            )


def _labelled_scores(node_url: str, key_path: Path, model_id: str, timeout: float = 60) -> int:
    """How many of the model's RiskAssessments at the node carry the not-for-clinical-use tag,
    once the care worker has labelled all of them (polled with a deadline)."""
    from federated.cohort import BackendTokenSource

    tokens = BackendTokenSource(node_url, CLIENT_ID, key_path, "system/*.rs")
    with httpx.Client(timeout=30) as http:
        auth = {"Authorization": f"Bearer {tokens.token(http)}"}

        def count(*tag: str) -> int:
            params = {"method": f"{MODEL_SYSTEM}|{model_id}", "_summary": "count"}
            if tag:
                params["_tag"] = tag[0]
            r = http.get(f"{node_url}/fhir/RiskAssessment", params=params, headers=auth)
            r.raise_for_status()
            return int(r.json().get("total", 0))

        scored = count()
        found = 0

        def all_labelled() -> bool:
            nonlocal found
            found = count(f"{LABEL_SYSTEM}|{NOT_FOR_CLINICAL_USE}")
            return found >= scored

        wait_until(all_labelled, timeout=timeout, interval=0.5, what="the care worker's labels")
    return found
