"""Demo chapter: the region's hospital and clinic nodes.

``start`` initialises and starts the region's nodes (``net.node_specs``; by default
``DEMO_NODES``: one tertiary hospital, two community clinics) as ``ipjms node serve`` processes
on free loopback ports, state under ``<workdir>/node-<org>/`` (SQLite there, or the database
``net.db_urls["node-<org>"]``, which ``node init`` writes into node.toml). Extra node
settings come from earlier chapters as environment variables: ``net.facts["node_env"]`` (all
nodes) and ``net.facts["node_env_by_org"][org]``.

``run`` seeds each node (the tertiary hospital's patients are more numerous, older and sicker),
writes a Synthea-shaped export of generated patients (``ipjms node generate``, into
``<workdir>/generated-bundles/``: hospital and practitioner Bundles, one Bundle per patient — made
by the project's own generator, not by Synthea) and loads it into the tertiary node with
``ipjms node ingest``, prints per-node per-type counts read over the FHIR API, lets a SMART app
sign in to the tertiary hospital (discovery, authorization code + PKCE, patient picker, then
``Observation/$lastn`` and ``$everything`` with the app's patient-context token), and checks each
node's health. Nothing outside the repository is read.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
from html import unescape
from urllib.parse import parse_qs, urlsplit

import httpx
from rich.table import Table

from deploy.demo.network import DemoNetwork, NodeInfo, StepFailed
from deploy.launcher import free_port, ipjms_command

__all__ = ["start", "run", "SEED_PATIENTS", "COUNTED_TYPES", "GENERATED_EXPORT"]

# Patients seeded per profile; `shared` of them are people of the regional population (same
# national id at every site), so referrals and record pulls have someone to talk about.
SEED_PATIENTS = {"tertiary": 40, "community": 20}
SHARED_PEOPLE = 10
POPULATION_SEED = 2026
COUNTED_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Organization",
    "Practitioner",
)
# The Synthea-shaped export ingested into the tertiary hospital: its own people (a seed no
# node is seeded with), so they add to the tertiary hospital's patients rather than repeat them.
GENERATED_EXPORT = {"patients": 6, "seed": 100}
_ADMIN_PASSWORD_FILE = "demo-admin-password"  # noqa: S105 - a file name; demo only


def _ipjms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ipjms_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
        timeout=600,
    )


def _pseudonym_env(net: DemoNetwork) -> dict[str, str]:
    url = net.facts.get("pseudonym_url")
    return {"IPJMS_NODE_PSEUDONYM_URL": str(url)} if url else {}


def _node_env(net: DemoNetwork, org: str) -> dict[str, str]:
    env: dict[str, str] = {}
    # no linkage key: pseudonyms come from the authority (IPJMS_NODE_PSEUDONYM_URL, node_env)
    env.update({k: str(v) for k, v in net.facts.get("node_env", {}).items()})
    env.update({k: str(v) for k, v in net.facts.get("node_env_by_org", {}).get(org, {}).items()})
    return env


def start(net: DemoNetwork) -> None:
    for org, name, level, profile in net.node_specs:
        data_dir = net.service_dir(f"node-{org}")
        password_file = data_dir / _ADMIN_PASSWORD_FILE
        if not (data_dir / "node.toml").exists():
            password = secrets.token_urlsafe(16)
            init = _ipjms(
                "node", "init", "--org", org, "--name", name, "--level", level,
                "--data-dir", str(data_dir), *net.db_args(f"node-{org}"),
                # the authority's URL too, so init creates no linkage key on the node
                env={"IPJMS_ADMIN_PASSWORD": password, **_pseudonym_env(net)},
            )  # fmt: skip
            if init.returncode != 0:
                raise StepFailed(f"ipjms node init {org} failed: {init.stderr.strip()}")
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password)
        password = password_file.read_text().strip()
        port = free_port()
        url = f"{net.scheme}://127.0.0.1:{port}"
        env = {"IPJMS_NODE_PUBLIC_URL": url, **_node_env(net, org)}
        tls = net.tls_args(net.facts["pki"]["orgs"][org]) if net.tls else []
        net.start(
            f"node-{org}",
            ["node", "serve", "--data-dir", str(data_dir), "--port", str(port), *tls],
            base_url=url,
            env=env,
        )
        net.nodes[org] = NodeInfo(org, name, level, profile, data_dir, port, url, password)
        net.urls[f"{name} (FHIR)"] = f"{url}/fhir"


def _admin_headers(node: NodeInfo) -> dict[str, str]:
    r = httpx.post(
        f"{node.url}/auth/token",
        data={"grant_type": "password", "username": "admin", "password": node.admin_password},
        timeout=30,
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def node_counts(node: NodeInfo) -> dict[str, int]:
    """Live resources per type, read over the node's FHIR API (``_count=0`` → total only)."""
    headers = _admin_headers(node)
    counts = {}
    for rtype in COUNTED_TYPES:
        r = httpx.get(f"{node.url}/fhir/{rtype}", params={"_count": "0"}, headers=headers)
        r.raise_for_status()
        counts[rtype] = int(r.json()["total"])
    return counts


_DEMO_APP = "demo-chart-app"
_DEMO_REDIRECT = "http://127.0.0.1:9/demo-callback"  # never fetched: the demo reads the redirect


def _hidden_fields(page: str) -> dict[str, str]:
    pairs = re.findall(r"<input type='hidden' name='([^']*)' value='([^']*)'>", page)
    return {unescape(k): unescape(v) for k, v in pairs}


def smart_launch(node: NodeInfo, patient_id: str) -> dict[str, object]:
    """A SMART app's standalone launch at ``node``, as a browser and the app would do it: the
    discovery document, the sign-in page (the demo's admin), the patient picker, the code
    exchange with the PKCE verifier. Returns the token response."""
    conf = httpx.get(f"{node.url}/fhir/.well-known/smart-configuration", timeout=30).json()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_hex(8)
    params = {
        "response_type": "code", "client_id": _DEMO_APP, "redirect_uri": _DEMO_REDIRECT,
        "scope": "launch/patient openid fhirUser patient/*.rs", "state": state,
        "aud": f"{node.url}/fhir", "code_challenge": challenge.decode().rstrip("="),
        "code_challenge_method": "S256",
    }  # fmt: skip
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        page = browser.get(conf["authorization_endpoint"], params=params)
        login = {**_hidden_fields(page.text), "username": "admin", "password": node.admin_password}
        picker = browser.post(conf["authorization_endpoint"], data=login)
        chosen = {**_hidden_fields(picker.text), "patient": patient_id}
        done = browser.post(conf["authorization_endpoint"], data=chosen)
    if done.status_code != 303:
        raise StepFailed(f"SMART sign-in at {node.org_id} answered {done.status_code}")
    query = parse_qs(urlsplit(done.headers["location"]).query)
    if query.get("state") != [state] or "code" not in query:
        raise StepFailed(f"SMART sign-in at {node.org_id} returned no code: {query}")
    token = httpx.post(
        conf["token_endpoint"],
        data={"grant_type": "authorization_code", "code": query["code"][0], "client_id": _DEMO_APP,
              "redirect_uri": _DEMO_REDIRECT, "code_verifier": verifier},
        timeout=30,
    )  # fmt: skip
    token.raise_for_status()
    return dict(token.json())


def run(net: DemoNetwork) -> None:
    nodes = [net.nodes[org] for org, *_ in net.node_specs]
    with net.step("Seed synthetic patients at every node") as notes:
        running = []
        for index, node in enumerate(nodes):
            args = [
                "node", "seed", "--data-dir", str(node.data_dir), "--profile", node.profile,
                "--patients", str(SEED_PATIENTS[node.profile]), "--seed", str(index + 1),
                "--shared", str(SHARED_PEOPLE), "--population-seed", str(POPULATION_SEED),
            ]  # fmt: skip
            running.append(
                (node, subprocess.Popen(ipjms_command(*args), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
            )  # fmt: skip
        for node, proc in running:
            _out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"seeding {node.org_id} failed: {err.strip()[-500:]}")
            notes.append(
                f"{node.org_id}: {SEED_PATIENTS[node.profile]} {node.profile} patients "
                f"({SHARED_PEOPLE} shared with the region)"
            )

    tertiary = next(n for n in nodes if n.level == "tertiary")
    with net.step("Ingest a generated Synthea-shaped export into the tertiary hospital") as notes:
        folder = net.workdir / "generated-bundles"
        made = _ipjms(
            "node", "generate", "--out", str(folder), "--profile", "tertiary",
            "--patients", str(GENERATED_EXPORT["patients"]),
            "--seed", str(GENERATED_EXPORT["seed"]),
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"generating the export failed: {made.stderr.strip()[-500:]}")
        result = _ipjms("node", "ingest", "--data-dir", str(tertiary.data_dir), str(folder))
        if result.returncode != 0:
            raise RuntimeError(f"ingest failed: {result.stderr.strip()[-500:]}")
        files = len(list(folder.glob("*.json")))
        notes.append(
            f"{files} Bundles ({GENERATED_EXPORT['patients']} patients, hospital and practitioner "
            f"files) in Synthea's export layout, generated by the project (not Synthea output), "
            f"from {folder} into {tertiary.org_id}"
        )

    with net.step("Per-node record counts over the FHIR API") as notes:
        table = Table(title="Resources per node")
        table.add_column("resource type")
        all_counts = {}
        for node in nodes:
            table.add_column(node.org_id, justify="right")
            all_counts[node.org_id] = node_counts(node)
        for rtype in COUNTED_TYPES:
            table.add_row(rtype, *(str(all_counts[n.org_id][rtype]) for n in nodes))
        net.console.print(table)
        for node in nodes:
            counts = all_counts[node.org_id]
            expected = SEED_PATIENTS[node.profile]
            if node is tertiary:
                expected += GENERATED_EXPORT["patients"]
            if counts["Patient"] < expected:
                raise RuntimeError(f"{node.org_id} holds only {counts['Patient']} patients")
            notes.append(f"{node.org_id}: " + ", ".join(f"{t} {counts[t]}" for t in COUNTED_TYPES))
        net.facts["node_counts"] = all_counts

    with net.step("A SMART app signs in to the tertiary hospital (App Launch 2, PKCE)") as notes:
        registered = _ipjms(
            "node", "app", "add", "--data-dir", str(tertiary.data_dir),
            "--client-id", _DEMO_APP, "--redirect-uri", _DEMO_REDIRECT, "--name", "Demo chart",
            *net.db_args(f"node-{tertiary.org_id}"),
        )  # fmt: skip
        if registered.returncode != 0 and "already exists" not in registered.stderr:
            raise StepFailed(f"ipjms node app add failed: {registered.stderr.strip()}")
        admin = _admin_headers(tertiary)
        first = httpx.get(
            f"{tertiary.url}/fhir/Patient", params={"_count": "1", "_sort": "family"},
            headers=admin, timeout=30,
        ).json()["entry"][0]["resource"]  # fmt: skip
        grant = smart_launch(tertiary, first["id"])
        bearer = {"Authorization": f"Bearer {grant['access_token']}"}
        latest = httpx.get(
            f"{tertiary.url}/fhir/Observation/$lastn", params={"patient": first["id"]},
            headers=bearer, timeout=30,
        ).json()  # fmt: skip
        record = httpx.get(
            f"{tertiary.url}/fhir/Patient/{first['id']}/$everything", params={"_count": "0"},
            headers=bearer, timeout=30,
        ).json()  # fmt: skip
        others = httpx.get(f"{tertiary.url}/fhir/Patient", headers=bearer, timeout=30).json()
        if grant.get("patient") != first["id"] or others["total"] != 1:
            raise StepFailed("the app's patient-context token reached beyond its patient")
        notes.append(
            f"discovery at {tertiary.url}/fhir/.well-known/smart-configuration; the admin signed "
            f"in and picked Patient/{first['id']}; token scopes: {grant['scope']}"
        )
        notes.append(
            f"Observation/$lastn: {latest['total']} latest readings (one per code); "
            f"$everything: {record['total']} resources; a Patient search with this token sees "
            f"{others['total']} patient"
        )

    with net.step("Node health") as notes:
        for node in nodes:
            r = httpx.get(f"{node.url}/healthz", timeout=10)
            if r.status_code != 200:
                raise RuntimeError(f"{node.org_id} /healthz answered {r.status_code}")
            notes.append(f"{node.org_id} healthy at {node.url}")

    if "pki" in net.facts:  # backups hold patient data: sealed, never in the clear
        from deploy.demo import backup_step

        backup_step.run(net, tertiary)
