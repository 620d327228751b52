"""Demo chapter: the coordinator and the consent-scoped exchange between nodes (issue 4).

``start`` registers the region's organisations in the coordinator's directory (from their PKI
credentials), starts ``ipjms coordinator serve`` (gRPC with mutual TLS, status API) under
``<workdir>/coordinator/`` and gives the nodes ``IPJMS_NODE_COORDINATOR_ADDRESS`` (plus the CA
and credentials folders) through ``net.facts["node_env"]``.

``run`` (after the consent chapter enrolled a patient and granted TREAT to clinic B): the
tertiary hospital refers the patient down to clinic B → B accepts → B's doctor asks the
hospital's cardiologist for a consultation → the hospital answers → clinic C, which has no
consent, is refused at the coordinator → C's doctor breaks the glass and pulls the history
with a stated reason (none: refused) → B pulls the patient's history. Every step prints what
travelled and its latency.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from deploy.demo.chapter_care import ensure_heart_failure
from deploy.demo.network import (
    AUTHORITY_ORG,
    COORDINATOR_ORG,
    DemoNetwork,
    NodeInfo,
    StepFailed,
)
from deploy.demo.pseudonym_authority import pseudonymiser
from deploy.demo.regional_ca import ensure_ca, issue
from deploy.launcher import free_port, ipjms_command, wait_until
from node.identity import patient_pseudonyms
from trust.pseudonymiser import Pseudonymiser

__all__ = ["start", "run"]

_DOCTOR_PASSWORD_FILE = "demo-doctor-password"  # noqa: S105 - a file name; demo only
_PATIENT_PASSWORD_FILE = "demo-patient-password"  # noqa: S105 - written by the consent chapter


def _pki(net: DemoNetwork) -> dict[str, Any]:
    pki = net.facts.get("pki")
    if pki is None:  # the trust chapter did not run: make the same layout here
        ca_dir = net.service_dir("pki") / "ca"
        ensure_ca(ca_dir, name="IPJMS Demo Regional CA")
        pki = {"ca_dir": ca_dir, "orgs": {}}
        net.facts["pki"] = pki
    for org in (AUTHORITY_ORG, COORDINATOR_ORG, *(o for o, *_ in net.node_specs)):
        if org not in pki["orgs"]:
            out = Path(pki["ca_dir"]) / "orgs" / org
            if not (out / "org.json").exists():
                issue(pki["ca_dir"], org, host="127.0.0.1,localhost")
            pki["orgs"][org] = out
    return dict(pki)


def _ipjms(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        ipjms_command(*args),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise StepFailed(f"ipjms {' '.join(args[:2])} failed: {done.stderr.strip()[-400:]}")


def start(net: DemoNetwork) -> None:
    pki = _pki(net)
    data_dir = net.service_dir("coordinator")
    lines = []
    levels = {AUTHORITY_ORG: "authority", COORDINATOR_ORG: "authority"}
    names = {AUTHORITY_ORG: "Regional Health Authority", COORDINATOR_ORG: "Regional coordinator"}
    for org, name, level, _profile in net.node_specs:
        levels[org], names[org] = level, name
    for org, level in levels.items():
        lines += [
            "[[organisation]]",
            f'credentials = "{pki["orgs"][org]}"',
            f'name = "{names[org]}"',
            f'level = "{level}"',
            "",
        ]
    config = data_dir / "organisations.toml"
    config.write_text("\n".join(lines))
    _ipjms(
        "coordinator", "register-org", "--data-dir", str(data_dir), "--config", str(config),
        *net.db_args("coordinator"),
    )  # fmt: skip
    port, http_port = free_port(), free_port()
    args = [
        "coordinator",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--ca-dir",
        str(pki["ca_dir"]),
        "--org-dir",
        str(pki["orgs"][COORDINATOR_ORG]),
        *net.db_args("coordinator"),
        # the console's quality indicators page reads the authority's SuperLink runs (the
        # federated chapter's net.service_dir("superlink"); empty until it has run)
        "--console-federated-dir",
        str(net.workdir / "superlink"),
        # an analyst may start a training run from the console: as the authority, publishing
        # to this coordinator's registry (as the federated chapter's run does)
        "--console-authority-dir",
        str(pki["orgs"][AUTHORITY_ORG]),
        "--console-registry-url",
        f"{net.scheme}://127.0.0.1:{http_port}",
    ]
    if net.facts.get("consent_url"):
        args += ["--consent-url", net.facts["consent_url"]]
    if net.tls:
        args.append("--http-tls")
    net.start("coordinator", args, base_url=f"{net.scheme}://127.0.0.1:{http_port}")
    net.facts["coordinator"] = {
        "address": f"127.0.0.1:{port}",
        "status_url": f"{net.scheme}://127.0.0.1:{http_port}/status",
        "data_dir": data_dir,
    }
    env = net.facts.setdefault("node_env", {})
    env["IPJMS_NODE_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    env["IPJMS_NODE_COORDINATOR_ORG"] = COORDINATOR_ORG  # only its certificate is accepted
    env.setdefault("IPJMS_NODE_CA_DIR", str(pki["ca_dir"]))
    by_org = net.facts.setdefault("node_env_by_org", {})
    for org, *_ in net.node_specs:
        by_org.setdefault(org, {}).setdefault(
            "IPJMS_NODE_ORG_CREDENTIALS_DIR", str(pki["orgs"][org])
        )
    net.urls["Coordinator status API (authority)"] = f"{net.scheme}://127.0.0.1:{http_port}/status"


# --- run ------------------------------------------------------------------------------------


def _doctor(net: DemoNetwork, node: NodeInfo) -> dict[str, str]:
    """A doctor account at ``node`` (created once), and its bearer header."""
    password_file = node.data_dir / _DOCTOR_PASSWORD_FILE
    if not password_file.exists():
        password = secrets.token_urlsafe(16)
        _ipjms(
            "node",
            "user",
            "add",
            "--data-dir",
            str(node.data_dir),
            "--username",
            "doctor",
            "--role",
            "doctor",
            env={"IPJMS_USER_PASSWORD": password},
        )
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password)
    r = httpx.post(
        f"{node.url}/auth/token",
        data={
            "grant_type": "password",
            "username": "doctor",
            "password": password_file.read_text().strip(),
        },
        timeout=30,
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _post(node: NodeInfo, headers: dict[str, str], path: str, body: Any) -> dict[str, Any]:
    r = httpx.post(f"{node.url}{path}", json=body, headers=headers, timeout=120)
    if r.status_code >= 300:
        raise RuntimeError(f"{node.org_id} {path}: {r.status_code} {r.text[:300]}")
    return r.json()  # type: ignore[no-any-return]


def _get(node: NodeInfo, headers: dict[str, str], path: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{node.url}{path}", params=params, headers=headers, timeout=60)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def _inbox(node: NodeInfo, headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(_get(node, headers, "/exchange/inbox")["envelopes"])


def _wait_inbox(node: NodeInfo, headers: dict[str, str], envelope_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def arrived() -> bool:
        for row in _inbox(node, headers):
            if row["envelope_id"] == envelope_id:
                found.update(row)
                return True
        return False

    wait_until(arrived, 60, interval=0.1, what=f"envelope {envelope_id[:8]} at {node.org_id}")
    return found


def _local_patient(
    node: NodeInfo, headers: dict[str, str], pseudo: str, key: Pseudonymiser
) -> str | None:
    url: str | None = f"{node.url}/fhir/Patient?_count=200"
    while url:
        r = httpx.get(url, headers=headers, timeout=30)
        r.raise_for_status()
        bundle = r.json()
        patients = [entry["resource"] for entry in bundle.get("entry", [])]
        for patient, found in zip(patients, patient_pseudonyms(patients, key), strict=True):
            if found == pseudo:
                return str(patient["id"])
        url = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
    return None


def _extra_consent(net: DemoNetwork, pseudo: str, hospital: str, clinic: str) -> str:
    """The patient lets the hospital's cardiologists see what a consultation needs, and lets
    the clinic receive the advice and the referral's request."""
    facts = net.facts["consent"]
    password = (Path(net.facts["consent_data_dir"]) / _PATIENT_PASSWORD_FILE).read_text().strip()
    url = net.facts["consent_url"]
    login = httpx.post(
        f"{url}/auth/patient-token",
        timeout=30,
        data={"username": facts["patient_username"], "password": password},
    )
    login.raise_for_status()
    record = ConsentRecord(
        "new",
        pseudo,
        "active",
        Provision(
            "deny",
            provisions=(
                Provision(
                    "permit",
                    actors=frozenset({hospital}),
                    purposes=frozenset({"TREAT"}),
                    classes=frozenset(
                        {"Patient", "Condition", "Observation", "MedicationStatement"}
                    ),
                ),
                Provision(
                    "permit",
                    actors=frozenset({clinic}),
                    purposes=frozenset({"TREAT"}),
                    classes=frozenset({"Patient", "ServiceRequest", "Communication"}),
                ),
            ),
        ),
    )
    body = to_fhir(record)
    del body["id"]
    r = httpx.post(
        f"{url}/fhir/Consent",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
    )
    r.raise_for_status()
    return str(r.json()["id"])


def run(net: DemoNetwork) -> None:
    facts = net.facts["consent"]
    pseudo = facts["pseudonym"]
    hospital = next(n for n in net.nodes.values() if n.level == "tertiary")
    clinic_b = net.nodes[facts["treat_recipient"]]
    clinic_c = next(n for n in net.nodes.values() if n.level == "community" and n is not clinic_b)
    doc_a, doc_b, doc_c = (_doctor(net, n) for n in (hospital, clinic_b, clinic_c))
    patient_a = facts["patient_at"][hospital.org_id]

    with net.step("The nodes publish their patients' pseudonyms to the record locator") as notes:
        for node, headers in ((hospital, doc_a), (clinic_b, doc_b), (clinic_c, doc_c)):
            count = _post(node, headers, "/exchange/publish", {})["published"]
            notes.append(f"{node.org_id}: {count} pseudonyms (no names, no identifiers)")
        consent_id = _extra_consent(net, pseudo, hospital.org_id, clinic_b.org_id)
        notes.append(
            f"the patient adds Consent/{consent_id}: consultation data to "
            f"{hospital.org_id}, advice to {clinic_b.org_id}"
        )

    with net.step(
        f"{hospital.org_id} refers the discharged patient down to {clinic_b.org_id}"
    ) as notes:
        notes.append(ensure_heart_failure(hospital, doc_a, patient_a))  # the care chapter's
        t0 = time.perf_counter()
        sent = _post(
            hospital,
            doc_a,
            "/exchange/requests",
            {
                "kind": "referral",
                "patient": f"Patient/{patient_a}",
                "recipient": clinic_b.org_id,
                "reason": "Discharged after heart-failure admission; follow-up near home",
            },
        )
        row = _wait_inbox(clinic_b, doc_b, sent["envelope_id"])
        if row["outcome"] != "imported":
            raise RuntimeError(f"referral not imported: {row['detail']}")
        notes.append(
            f"{sent['resources']} resources sealed to {clinic_b.org_id}; classes "
            f"{sent['classes']} (only what the patient consented to)"
        )
        notes.append(
            f"inside the envelope: the registry's decision, bound to envelope "
            f"{sent['envelope_id'][:8]}… and signed with its CA-issued certificate — "
            f"{clinic_b.org_id} verified it before importing; the payload was padded to a "
            "size bucket, so the coordinator stores no exact size"
        )
        notes.append(
            f"send at {hospital.org_id} → imported at {clinic_b.org_id}: "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        task_b = row["task_uid"]

    with net.step(f"{clinic_b.org_id} accepts; the Task status flows back") as notes:
        tasks = _get(
            clinic_b,
            doc_b,
            "/fhir/Task",
            identifier=f"https://ipjms.example.org/fhir/sid/exchange-task|{task_b}",
        )
        local_task = tasks["entry"][0]["resource"]["id"]
        t0 = time.perf_counter()
        _post(clinic_b, doc_b, f"/exchange/tasks/{local_task}/accept", {})

        def accepted() -> bool:
            return _get(hospital, doc_a, f"/fhir/{sent['task']}")["status"] == "accepted"

        wait_until(accepted, 60, interval=0.1, what="accepted at the hospital")
        notes.append(
            f"{sent['task']} at {hospital.org_id}: requested → accepted "
            f"({(time.perf_counter() - t0) * 1000:.0f} ms)"
        )

    patient_b = next(
        (
            r["patient_id"]
            for r in _inbox(clinic_b, doc_b)
            if r["envelope_id"] == sent["envelope_id"]
        ),
        None,
    )
    net.facts["referral"] = {"patient_at_b": patient_b}
    with net.step(
        f"{clinic_b.org_id}'s doctor asks {hospital.org_id} for a cardiology consultation"
    ) as notes:
        t0 = time.perf_counter()
        consult = _post(
            clinic_b,
            doc_b,
            "/exchange/requests",
            {
                "kind": "consultation",
                "patient": f"Patient/{patient_b}",
                "recipient": hospital.org_id,
                "reason": "Worsening dyspnoea and ankle oedema",
                "question": "Up-titrate the diuretic?",
            },
        )
        row = _wait_inbox(hospital, doc_a, consult["envelope_id"])
        notes.append(
            f"question + {consult['classes']} → {hospital.org_id} "
            f"({(time.perf_counter() - t0) * 1000:.0f} ms)"
        )

    with net.step(f"{hospital.org_id}'s cardiologist answers") as notes:
        tasks = _get(
            hospital,
            doc_a,
            "/fhir/Task",
            identifier=f"https://ipjms.example.org/fhir/sid/exchange-task|{row['task_uid']}",
        )
        task_a = tasks["entry"][0]["resource"]["id"]
        t0 = time.perf_counter()
        _post(
            hospital,
            doc_a,
            f"/exchange/tasks/{task_a}/answer",
            {"text": "Increase the loop diuretic; recheck weight and electrolytes in 3 days."},
        )

        def completed() -> bool:
            return _get(clinic_b, doc_b, f"/fhir/{consult['task']}")["status"] == "completed"

        wait_until(completed, 60, interval=0.1, what="advice at the clinic")
        task = _get(clinic_b, doc_b, f"/fhir/{consult['task']}")
        notes.append(
            f"advice {task['output'][0]['valueReference']['reference']} linked to "
            f"{consult['task']} at {clinic_b.org_id} "
            f"({(time.perf_counter() - t0) * 1000:.0f} ms)"
        )

    with net.step(f"{clinic_c.org_id}, without consent, is refused at the coordinator") as notes:
        patient_c = _local_patient(clinic_c, doc_c, pseudo, pseudonymiser(net, clinic_c.org_id))
        if patient_c is not None:
            # The record locator itself refuses: without consent, C does not even learn
            # where the patient is treated.
            r = httpx.post(
                f"{clinic_c.url}/exchange/pulls",
                json={"patient": f"Patient/{patient_c}"},
                headers=doc_c,
                timeout=60,
            )
            if r.status_code != 403:
                raise RuntimeError(f"clinic C's lookup was not refused: {r.status_code}")
            notes.append(f"record-locator lookup by {clinic_c.org_id}: 403, no consent")
        r = httpx.post(
            f"{hospital.url}/exchange/requests",
            headers=doc_a,
            timeout=60,
            json={
                "kind": "referral",
                "patient": f"Patient/{patient_a}",
                "recipient": clinic_c.org_id,
                "reason": "wrong clinic",
            },
        )
        if r.status_code != 403:
            raise RuntimeError(f"a referral to {clinic_c.org_id} was not refused: {r.status_code}")
        notes.append(f"referral {hospital.org_id} → {clinic_c.org_id}: 403, no consent")

    with net.step(
        f"{clinic_c.org_id}'s doctor breaks the glass: pulls the history with a stated reason"
    ) as notes:
        patient_c = _local_patient(clinic_c, doc_c, pseudo, pseudonymiser(net, clinic_c.org_id))
        if patient_c is None:
            notes.append(f"{clinic_c.org_id} holds no record of the patient; nothing to pull")
        else:
            pull = {"patient": f"Patient/{patient_c}", "emergency": True}
            r = httpx.post(f"{clinic_c.url}/exchange/pulls", headers=doc_c, timeout=60,
                           json={**pull, "break_glass_reason": " "})  # fmt: skip
            if r.status_code != 400:
                raise RuntimeError(f"a break-glass pull without a reason answered {r.status_code}")
            notes.append("without a stated reason: 400 from the consent registry, nothing sent")
            t0 = time.perf_counter()
            stated = "collapsed in the waiting room; allergies and medication unknown"
            emergency = _post(clinic_c, doc_c, "/exchange/pulls",
                              {**pull, "break_glass_reason": stated})  # fmt: skip
            notes.append(
                f"with it: the registry's break-glass grant, holders {emergency['holders']}, "
                f"record queries {[q['state'] for q in emergency['queries']]}"
            )

            def under_break_glass() -> list[dict[str, Any]]:
                return [
                    r for r in _inbox(clinic_c, doc_c)
                    if r["kind"] == "record-answer" and r["patient_id"] == patient_c
                    and r["detail"].startswith("break-glass")
                ]  # fmt: skip

            wait_until(under_break_glass, 60, interval=0.1, what="break-glass record answer")
            first = under_break_glass()[0]
            notes.append(
                f"{first['detail']} from {first['sender']} "
                f"({(time.perf_counter() - t0) * 1000:.0f} ms); {hospital.org_id}'s inbox: "
                + next(
                    (
                        r["detail"]
                        for r in _inbox(hospital, doc_a)
                        if r["kind"] == "record-query" and r["detail"].startswith("break-glass")
                    ),
                    "?",
                )  # fmt: skip
            )
            flagged = _break_glass_disclosures(net, stated)
            if flagged is not None:
                notes.append(
                    f"the patient's list: {flagged} break-glass entries with that reason "
                    "(the pull grant, each record query, each answer)"
                )

    with net.step(f"{clinic_b.org_id} pulls the patient's history") as notes:
        t0 = time.perf_counter()
        pulled = _post(clinic_b, doc_b, "/exchange/pulls", {"patient": f"Patient/{patient_b}"})
        notes.append(f"holders from the record locator: {pulled['holders']}")

        def answered() -> list[dict[str, Any]]:
            return [
                r
                for r in _inbox(clinic_b, doc_b)
                if r["kind"] == "record-answer" and r["patient_id"] == patient_b
            ]

        wait_until(answered, 60, interval=0.1, what="record answer")
        notes.append(
            f"{answered()[0]['detail']} from {answered()[0]['sender']}, each with meta.source "
            f"and a Provenance ({(time.perf_counter() - t0) * 1000:.0f} ms)"
        )

    with net.step("The coordinator holds none of what it carried") as notes:
        secrets_seen = _exchanged_values(clinic_b, doc_b)
        coordinator = net.facts["coordinator"]
        _dump_database(net, Path(coordinator["data_dir"]))  # PostgreSQL: its rows as a file too
        files = [p for p in Path(coordinator["data_dir"]).rglob("*") if p.is_file()]
        files.append(net.services["coordinator"].log_path)
        for path in files:
            data = path.read_bytes().lower()
            leaked = [s for s in secrets_seen if s.lower().encode() in data]
            if leaked:
                raise RuntimeError(f"{path.name} contains exchanged content ({len(leaked)} values)")
        notes.append(
            f"{len(secrets_seen)} names, identifiers and clinical values received at "
            f"{clinic_b.org_id}: none in the coordinator's {len(files)} files "
            f"(database files and log)"
        )


def _break_glass_disclosures(net: DemoNetwork, reason: str) -> int | None:
    """How many break-glass entries with ``reason`` the patient's own disclosure list shows
    (signed in as the consent chapter's patient; None when that patient is not there)."""
    consent, url = net.facts.get("consent", {}), net.facts.get("consent_url")
    password_file = net.service_dir("consent") / "demo-patient-password"
    if not consent.get("patient_username") or not url or not password_file.exists():
        return None
    login = httpx.post(
        f"{url}/auth/patient-token",
        data={"username": consent["patient_username"],
              "password": password_file.read_text().strip()},
        timeout=30,
    )  # fmt: skip
    login.raise_for_status()
    r = httpx.get(
        f"{url}/patients/me/disclosures",
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        timeout=30,
    )
    r.raise_for_status()
    flagged = [d for d in r.json()["disclosures"] if d["break_glass"] and d["reason"] == reason]
    if not flagged:
        raise RuntimeError("the break-glass pull is not in the patient's disclosure list")
    return len(flagged)


def _dump_database(net: DemoNetwork, data_dir: Path) -> None:
    """With the coordinator on PostgreSQL (``ipjms up``), write its database as a plain-SQL dump
    into its data dir so the leak check reads every row it holds."""
    url = net.db_urls.get("coordinator")
    if not url or not url.startswith("postgresql"):
        return
    env = dict(os.environ)
    if env.get("IPJMS_DB_PASSWORD_FILE"):  # libpq's variable, for this short-lived tool only
        env["PGPASSWORD"] = Path(env["IPJMS_DB_PASSWORD_FILE"]).read_text().strip()
    done = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", "-f", str(data_dir / "database-dump.sql"),
         "-d", url.replace("postgresql+psycopg://", "postgresql://")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pg_dump of the coordinator database failed: {done.stderr[-300:]}")


def _exchanged_values(node: NodeInfo, headers: dict[str, str]) -> set[str]:
    """Names, identifiers and clinical texts/values of what ``node`` imported from others."""
    values: set[str] = set()
    tag = "https://ipjms.example.org/fhir/CodeSystem/exchange-origin|"
    for rtype in ("Patient", "Condition", "Observation", "MedicationStatement", "Communication"):
        bundle = _get(node, headers, f"/fhir/{rtype}", _count="500")
        for entry in bundle.get("entry", []):
            res = entry["resource"]
            if rtype != "Patient" and not any(
                t.get("system") == tag[:-1] for t in res.get("meta", {}).get("tag", [])
            ):
                continue
            for name in res.get("name", []):
                values.update(n for n in [name.get("family", ""), *name.get("given", [])] if n)
            for ident in res.get("identifier", []):
                if "national" in ident.get("system", "") or "ssn" in ident.get("system", ""):
                    values.add(str(ident.get("value", "")))
            for coding in res.get("code", {}).get("coding", []):
                values.add(str(coding.get("display", "")))
            quantity = res.get("valueQuantity")
            if quantity and "value" in quantity:
                values.add(f'"value":{quantity["value"]}')
            for payload in res.get("payload", []):
                values.add(str(payload.get("contentString", "")))
    return {v for v in values if len(v) >= 5}
