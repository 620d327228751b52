"""Demo chapter: the consent registry.

``start`` uses the regional PKI of the trust chapter (or creates one under ``<workdir>/pki`` if
that chapter did not run), starts ``ipjms consent serve`` under ``<workdir>/consent/``, and hands
later chapters ``net.facts["consent_url"]`` plus the node settings they need
(``IPJMS_NODE_CONSENT_URL``, ``IPJMS_NODE_CA_DIR``, each node's ``IPJMS_NODE_ORG_CREDENTIALS_DIR``).

``run`` (after the nodes are seeded): a patient the tertiary hospital shares with a community
clinic enrols (the hospital's admin asks the node for a one-time code, the patient sets a
password at the registry), grants TREAT to the clinic for Condition, MedicationStatement,
MedicationRequest, Observation and AllergyIntolerance, and HRESCH to the regional authority;
signed decisions are asked for and verified offline; requests outside the consent (another
clinic, the Procedure class) are refused; the patient reads their disclosure list; the
registry's audit ledger verifies. ``net.facts["consent"]`` records the patient's pseudonym, the
local Patient ids and the consent id for later chapters.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from consent.client import ConsentClient
from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from deploy.demo.network import AUTHORITY_ORG, CONSENT_ORG, DemoNetwork, NodeInfo
from deploy.demo.pseudonym_authority import pseudonymiser, start_authority
from deploy.demo.regional_ca import ensure_ca, issue
from deploy.launcher import free_port, ipjms_command
from node.identity import patient_pseudonyms
from trust.pki import load_org
from trust.pseudonymiser import Pseudonymiser
from trust.tokens import jwk_thumbprint, load_or_create_signing_key

__all__ = ["start", "run", "TREAT_CLASSES"]

TREAT_CLASSES = (
    "Condition",
    "MedicationStatement",
    "MedicationRequest",
    "Observation",
    "AllergyIntolerance",
)
_PATIENT_PASSWORD_FILE = "demo-patient-password"  # noqa: S105 - a file name; demo only


def _pki(net: DemoNetwork) -> dict[str, Any]:
    """The trust chapter's PKI facts, or a PKI made here with the same layout."""
    if "pki" in net.facts:
        return dict(net.facts["pki"])
    pki_dir = net.service_dir("pki")
    ca_dir = pki_dir / "ca"
    ensure_ca(ca_dir, name="IPJMS Demo Regional CA")
    orgs: dict[str, Path] = {}
    for org in [AUTHORITY_ORG, CONSENT_ORG, *(o for o, *_ in net.node_specs)]:
        out = ca_dir / "orgs" / org
        if not (out / "org.json").exists():
            issue(ca_dir, org, host="127.0.0.1,localhost")
        orgs[org] = out
    net.facts["pki"] = {"ca_dir": ca_dir, "orgs": orgs}
    if "pseudonym_url" not in net.facts:
        start_authority(net)
    return dict(net.facts["pki"])


def start(net: DemoNetwork) -> None:
    pki = _pki(net)
    data_dir = net.service_dir("consent")
    port = free_port()
    url = f"{net.scheme}://127.0.0.1:{port}"
    net.start(
        "consent",
        ["consent", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--ca-dir", str(pki["ca_dir"]), "--org-id", CONSENT_ORG,
         "--org-dir", str(pki["orgs"][CONSENT_ORG]), *net.db_args("consent"),
         *net.tls_args(pki["orgs"][CONSENT_ORG]),
         *(["--public-url", url] if net.tls else [])],  # the token audience: https://…
        base_url=url,
        # a whole region on one machine: argon2id at OWASP's minimum, not RFC 9106's (the
        # research chapter enrols 90 patients; trust/password_hashing.py)
        env={"IPJMS_CONSENT_PASSWORD_HASH": "owasp-minimum"},
    )  # fmt: skip
    net.facts["consent_url"] = url
    net.facts["consent_data_dir"] = data_dir
    env = net.facts.setdefault("node_env", {})
    env["IPJMS_NODE_CONSENT_URL"] = url
    # decisions are trusted only when signed by the registry's CA-issued certificate
    env["IPJMS_NODE_CONSENT_REGISTRY_ORG"] = CONSENT_ORG
    # the region's one patient login: nodes trust the registry's patient-token key, pinned
    # (what `ipjms consent key-pin --data-dir <registry>` prints; plain http needs the pin)
    token_key = load_or_create_signing_key(data_dir / "keys" / "access-token.pem")
    env["IPJMS_NODE_CONSENT__PATIENT_KEY_PINS"] = json.dumps(
        [jwk_thumbprint(token_key.public_jwk())]
    )
    env.setdefault("IPJMS_NODE_CA_DIR", str(pki["ca_dir"]))
    by_org = net.facts.setdefault("node_env_by_org", {})
    for org, *_ in net.node_specs:
        if org in pki["orgs"]:
            by_org.setdefault(org, {}).setdefault(
                "IPJMS_NODE_ORG_CREDENTIALS_DIR", str(pki["orgs"][org])
            )
    net.urls["Consent registry (FHIR Consent, $decide)"] = f"{url}/fhir/Consent"


def _admin_headers(node: NodeInfo) -> dict[str, str]:
    r = httpx.post(
        f"{node.url}/auth/token",
        data={"grant_type": "password", "username": "admin", "password": node.admin_password},
        timeout=30,
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _pseudonyms(node: NodeInfo, key: Pseudonymiser) -> dict[str, str]:
    """pseudonym → local Patient id, over the node's FHIR API."""
    headers = _admin_headers(node)
    out: dict[str, str] = {}
    url: str | None = f"{node.url}/fhir/Patient?_count=200"
    while url:
        r = httpx.get(url, headers=headers, timeout=30)
        r.raise_for_status()
        bundle = r.json()
        patients = [entry["resource"] for entry in bundle.get("entry", [])]
        for patient, pseudo in zip(patients, patient_pseudonyms(patients, key), strict=True):
            if pseudo:
                out.setdefault(pseudo, patient["id"])
        url = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
    return out


def _consent_body(pseudonym: str, clinic: str) -> dict[str, Any]:
    record = ConsentRecord(
        "new",
        pseudonym,
        "active",
        Provision(
            "deny",  # opt-in: nothing but what is permitted below
            provisions=(
                Provision(
                    "permit",
                    actors=frozenset({clinic}),
                    purposes=frozenset({"TREAT"}),
                    classes=frozenset(TREAT_CLASSES),
                ),
                Provision(
                    "permit", actors=frozenset({AUTHORITY_ORG}), purposes=frozenset({"HRESCH"})
                ),
            ),
        ),
    )
    body = to_fhir(record)
    del body["id"]
    return body


def run(net: DemoNetwork) -> None:
    url = net.facts["consent_url"]
    pki = net.facts["pki"]
    tertiary = next(n for n in net.nodes.values() if n.level == "tertiary")
    key = pseudonymiser(net, tertiary.org_id)  # as the hospital asks the authority
    clinic, other_clinic = [n for n in net.nodes.values() if n.level == "community"][:2]

    with net.step("A patient enrols in the consent registry through the hospital") as notes:
        at_tertiary = _pseudonyms(tertiary, key)
        at_clinic = _pseudonyms(clinic, key)
        shared = sorted(set(at_tertiary) & set(at_clinic))
        pseudonym = shared[0] if shared else sorted(at_tertiary)[0]
        r = httpx.post(
            f"{tertiary.url}/consent/enrolment-code",
            json={"patient": at_tertiary[pseudonym]},
            headers=_admin_headers(tertiary),
            timeout=30,
        )
        if r.status_code != 201:
            raise RuntimeError(f"node refused to issue an enrolment code: {r.text[:300]}")
        code = r.json()["code"]
        password = os.urandom(12).hex()
        (net.service_dir("consent") / _PATIENT_PASSWORD_FILE).write_text(password)
        enrol = httpx.post(f"{url}/enrol", json={"code": code, "password": password}, timeout=30)
        enrol.raise_for_status()
        username = enrol.json()["username"]
        again = httpx.post(f"{url}/enrol", json={"code": code, "password": password}, timeout=30)
        if again.status_code != 400:
            raise RuntimeError("an enrolment code was accepted twice")
        login = httpx.post(
            f"{url}/auth/patient-token",
            data={"username": username, "password": password},
            timeout=30,
        )
        login.raise_for_status()
        patient_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        notes.append(
            f"Patient/{at_tertiary[pseudonym]} at {tertiary.org_id} "
            f"(also Patient/{at_clinic.get(pseudonym, '-')} at {clinic.org_id}) "
            f"→ pseudonym {pseudonym[:12]}…, login {username}; code refused on second use"
        )

    with net.step(
        f"The patient grants TREAT to {clinic.org_id} and HRESCH to the authority"
    ) as notes:
        r = httpx.post(
            f"{url}/fhir/Consent",
            json=_consent_body(pseudonym, clinic.org_id),
            headers=patient_headers,
            timeout=30,
        )
        if r.status_code != 201:
            raise RuntimeError(f"consent refused: {r.text[:300]}")
        consent_id = r.json()["id"]
        notes.append(
            f"Consent/{consent_id}: TREAT → {clinic.org_id} for {', '.join(TREAT_CLASSES)}; "
            f"HRESCH → {AUTHORITY_ORG} (all classes)"
        )

    hospital = ConsentClient(url, load_org(pki["orgs"][tertiary.org_id]))
    with net.step("Signed decisions: inside the consent permitted, outside refused") as notes:
        d = hospital.decide(pseudonym, clinic.org_id, "TREAT", ["Condition", "Observation"])
        if not (d.permit and d.classes == {"Condition", "Observation"}):
            raise RuntimeError(f"expected a permit, got {d.reason}")
        # The clinic verifies the decision offline with the registry's published key.
        receiver = ConsentClient(url, load_org(pki["orgs"][clinic.org_id]))
        checked = receiver.verify_decision(d.token)
        notes.append(
            f"TREAT {tertiary.org_id}→{clinic.org_id} [Condition, Observation]: PERMIT "
            f"(consent {', '.join(d.consent_ids)}; signature verified offline by {clinic.org_id},"
            f" valid until {datetime.fromtimestamp(checked.expires_at, UTC):%H:%M:%S} UTC)"
        )
        refused = hospital.decide(pseudonym, other_clinic.org_id, "TREAT", ["Condition"])
        if refused.permit:
            raise RuntimeError("a clinic without consent was permitted")
        notes.append(f"TREAT → {other_clinic.org_id}: DENY ({refused.reason})")
        procedure = hospital.decide(pseudonym, clinic.org_id, "TREAT", ["Procedure"])
        if procedure.permit:
            raise RuntimeError("a class outside the consent was permitted")
        notes.append(f"TREAT → {clinic.org_id} [Procedure]: DENY ({procedure.reason})")
        authority = ConsentClient(url, load_org(pki["orgs"][AUTHORITY_ORG]))
        research = authority.decide(
            pseudonym, AUTHORITY_ORG, "HRESCH", ["Condition", "Observation", "Encounter"]
        )
        if not research.permit:
            raise RuntimeError(f"HRESCH to the authority refused: {research.reason}")
        notes.append(f"HRESCH → {AUTHORITY_ORG}: PERMIT {sorted(research.classes)}")

    with net.step("The patient reads every disclosure of their data") as notes:
        r = httpx.get(f"{url}/patients/me/disclosures", headers=patient_headers, timeout=30)
        r.raise_for_status()
        items = r.json()["disclosures"]
        if len(items) != 2:
            raise RuntimeError(f"expected 2 authorised disclosures, found {len(items)}")
        for item in items:
            notes.append(
                f"{item['when']}: {item['purpose']} {item['requester']} → {item['recipient']} "
                f"{item['classes']}{' BREAK-GLASS' if item['break_glass'] else ''}"
            )

    with net.step("The consent registry's audit ledger verifies") as notes:
        db = net.db_urls.get("consent") or (
            f"sqlite:///{(Path(net.facts['consent_data_dir']) / 'consent.db').resolve()}"
        )
        result = subprocess.run(
            ipjms_command("audit", "verify", "--db", db),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ledger verification failed: {result.stdout}{result.stderr}")
        notes.append(result.stdout.strip())

    net.facts["consent"] = {
        "pseudonym": pseudonym,
        "patient_at": {
            tertiary.org_id: at_tertiary[pseudonym],
            clinic.org_id: at_clinic.get(pseudonym),
        },
        "consent_id": consent_id,
        "treat_recipient": clinic.org_id,
        "patient_username": username,
    }
