# ruff: noqa: E501
"""A real regional network for the exchange tests: consent registry, coordinator and nodes, each
its own process (``ipjms … serve``) on loopback, mutual TLS between nodes and coordinator."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from consent.client import ConsentClient, SignedDecision
from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from deploy.demo.pseudonym_authority import BULK_LOAD_BUDGET
from deploy.launcher import Service, start_service, wait_until
from node.exchange.documents import attach_decision
from node.identity import NATIONAL_ID_SYSTEM
from tests.cli_inprocess import run_ipjms
from trust.envelopes import EnvelopeHeader
from trust.oprf_client import OprfPseudonyms
from trust.pseudonymiser import OprfPseudonymiser

REGISTRY_ORG = (
    "consent-registry"  # the registry's organisation: decisions signed by its CA-issued key
)
ORGS = {
    "coordinator": ("Regional coordinator", "authority"),
    "authority": ("Regional health authority", "authority"),
    "hosp-a": ("Tertiary Hospital A", "tertiary"),
    "clinic-b": ("Community Clinic B", "community"),
    "clinic-c": ("Community Clinic C", "community"),
}

PASSWORD = "correct horse battery staple"
FHIR = "application/fhir+json"


@dataclass
class NodeProc:
    org_id: str
    url: str
    data_dir: Path
    service: Service
    args: list[str]
    env: dict[str, str]
    token: str = ""
    token_renew_at: float = 0.0  # time.monotonic() after which the token is re-issued

    def headers(self) -> dict[str, str]:
        """The doctor's bearer token, signed in again before it expires: a module's region
        outlives the node's token_ttl on a loaded machine (CI: 'token expired' in the doctor
        pages after a 47-minute run)."""
        if not self.token or time.monotonic() >= self.token_renew_at:
            r = httpx.post(
                f"{self.url}/auth/token",
                data={"grant_type": "password", "username": "doctor", "password": PASSWORD},
                timeout=60,  # argon2: seconds under the suite's load
            )
            r.raise_for_status()
            answer = r.json()
            self.token = answer["access_token"]
            # renewed at two thirds of its lifetime (RFC 6749 expires_in, seconds)
            self.token_renew_at = time.monotonic() + int(answer["expires_in"]) * 2 / 3
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, headers=self.headers(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers(), timeout=60)

    def search(self, rtype: str, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("_count", "500")
        bundle = self.get(f"/fhir/{rtype}", **params)
        return [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]

    def stop(self) -> None:
        self.service.stop()

    def restart(self) -> None:
        self.service = start_service(
            self.service.name, self.args, base_url=self.url,
            log_dir=self.service.log_path.parent, env=self.env,
        )  # fmt: skip
        self.token = ""


@dataclass
class Region:
    root: Path
    pki: Any
    consent_url: str
    consent_service: Service
    pseudonym_service: Service | None  # the authority's OPRF (None: a region without nodes)
    coordinator: Any = None
    nodes: dict[str, NodeProc] = field(default_factory=dict)

    @property
    def pseudonymiser(self) -> OprfPseudonymiser:
        """The authority's OPRF, asked as hosp-a (no node of the region holds a key)."""
        assert self.pseudonym_service is not None, "this region runs no pseudonym authority"
        client = OprfPseudonyms(self.pseudonym_service.base_url, self.pki.creds["hosp-a"])
        return OprfPseudonymiser(client)

    def pseudonym(self, national_id: str) -> str:
        return self.pseudonymiser.regional([(NATIONAL_ID_SYSTEM, national_id)])[0]

    def routing(self, regional: str, org_a: str, org_b: str) -> str:
        return self.pseudonymiser.routing(regional, org_a, org_b)

    def restart_consent(self) -> None:
        """Start the consent registry again (same data, same port) after a stop or kill."""
        self.consent_service.kill()
        port = int(self.consent_url.rsplit(":", 1)[1])
        self.consent_service = start_service(
            "consent", consent_args(self.root, self.pki, port, self.consent_url),
            base_url=self.consent_url, log_dir=self.root / "logs", env=CONSENT_ENV,
        )  # fmt: skip

    def consent_client(self, org_id: str) -> ConsentClient:
        return ConsentClient(self.consent_url, self.pki.creds[org_id])

    def bind(
        self,
        header: EnvelopeHeader,
        patient: str,
        *,
        document: dict[str, Any] | None = None,
        purpose: str = "TREAT",
        classes: Sequence[str] = ("Condition",),
    ) -> SignedDecision:
        """What a node does before sealing, for a test that seals by hand: :func:`bind_decision`
        asked as the header's sender; its token is carried in ``document`` when one is given."""
        with self.consent_client(header.sender) as client:
            decision = bind_decision(client, header, patient, purpose=purpose, classes=classes)
        if document is not None:
            attach_decision(document, decision.token)
        return decision

    def start_node(
        self, org_id: str, level: str, extra_env: dict[str, str] | None = None
    ) -> NodeProc:
        data_dir = self.root / f"node-{org_id}"
        env = {
            **(extra_env or {}),
            "IPJMS_ADMIN_PASSWORD": PASSWORD,
            "IPJMS_USER_PASSWORD": PASSWORD,
            "IPJMS_NODE_PSEUDONYM_URL": self.pseudonym_service.base_url
            if self.pseudonym_service
            else "",
            "IPJMS_NODE_COORDINATOR_ADDRESS": self.coordinator.address,
            "IPJMS_NODE_COORDINATOR_ORG": "coordinator",
            "IPJMS_NODE_CONSENT_URL": self.consent_url,
            "IPJMS_NODE_CA_DIR": str(self.pki.ca_dir),
            "IPJMS_NODE_ORG_CREDENTIALS_DIR": str(self.pki.org_dirs[org_id]),
        }
        if REGISTRY_ORG in self.pki.org_dirs:  # decisions pinned to the registry's certificate
            env["IPJMS_NODE_CONSENT_REGISTRY_ORG"] = REGISTRY_ORG
        # set-up only: in this process (tests/cli_inprocess.py), not an interpreter apiece
        run_ipjms("node", "init", "--org", org_id, "--name", org_id, "--level", level,
                  "--data-dir", str(data_dir), env=env)  # fmt: skip
        run_ipjms("node", "user", "add", "--data-dir", str(data_dir), "--username", "doctor",
                  "--role", "doctor", env=env)  # fmt: skip
        args = ["node", "serve", "--data-dir", str(data_dir), "--port", "0"]
        service = start_service(
            f"node-{org_id}", args, base_url="http://127.0.0.1:{http}",
            log_dir=self.root / "logs", env=env, ports_dir=data_dir,
        )  # fmt: skip
        args[-1] = str(service.extra["ports"]["http"])  # a restart keeps the port it got
        node = NodeProc(org_id, service.base_url, data_dir, service, args, env)
        self.nodes[org_id] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.coordinator is not None:
            self.coordinator.service.stop()
        self.consent_service.stop()
        if self.pseudonym_service is not None:
            self.pseudonym_service.stop()

    # -- consent ---------------------------------------------------------------------------

    def patient_token(self, pseudo: str) -> dict[str, str]:
        code = self.consent_client("hosp-a").create_enrolment_code(pseudo)["code"]
        # argon2 at enrolment and login: seconds apiece when the whole-story tests share the cores
        r = httpx.post(
            f"{self.consent_url}/enrol", json={"code": code, "password": PASSWORD}, timeout=60
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{self.consent_url}/auth/patient-token",
            data={"username": r.json()["username"], "password": PASSWORD},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def grant(self, headers: dict[str, str], pseudo: str, grants: dict[str, list[str]]) -> str:
        """A TREAT consent permitting each organisation the listed classes; returns its id."""
        nested = tuple(
            Provision("permit", actors=frozenset({org}), purposes=frozenset({"TREAT"}),
                      classes=frozenset(classes))
            for org, classes in grants.items()
        )  # fmt: skip
        body = to_fhir(ConsentRecord("x", pseudo, "active", Provision("deny", provisions=nested)))
        del body["id"]
        r = httpx.post(f"{self.consent_url}/fhir/Consent", json=body, headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def revoke(self, headers: dict[str, str], consent_id: str) -> None:
        r = httpx.post(
            f"{self.consent_url}/fhir/Consent/{consent_id}/$revoke", headers=headers, timeout=30
        )
        assert r.status_code in (200, 204), r.text


@dataclass
class Coordinator:
    service: Service
    address: str
    data_dir: Path
    http_url: str
    args: list[str]

    def restart(self) -> None:
        log_dir = self.service.log_path.parent
        self.service = start_service(
            self.service.name, self.args, base_url=self.http_url, log_dir=log_dir
        )


def bind_decision(
    client: ConsentClient,
    header: EnvelopeHeader,
    patient: str,
    *,
    purpose: str = "TREAT",
    classes: Sequence[str] = ("Condition",),
) -> SignedDecision:
    """Ask the registry (``client``: the header's sender) for a decision about ``patient`` (the
    regional pseudonym) bound to the header's envelope id, for the party the data goes to (a
    record query's sender, else its recipient) — as a node does before sealing. The clear header
    names no purpose or class (issue 23): the coordinator checks consent only on such a bound
    decision and refuses an envelope without one; the receiver wants its token inside the
    document (``node.exchange.documents.attach_decision``)."""
    data_to = header.sender if header.kind == "record-query" else header.recipient
    return client.decide(patient, data_to, purpose, list(classes), envelope_id=header.envelope_id)


def start_coordinator_process(
    data_dir: Path, pki: Any, log_dir: Path, *extra: str, name: str = "coordinator"
) -> Coordinator:
    """``ipjms coordinator serve --port 0`` (gRPC and status API on ports the OS picks)."""
    args = ["coordinator", "serve", "--data-dir", str(data_dir), "--port", "0",
            "--ca-dir", str(pki.ca_dir), "--org-dir", str(pki.org_dirs["coordinator"]),
            *extra]  # fmt: skip
    service = start_service(
        name, args, base_url="http://127.0.0.1:{http}", log_dir=log_dir, ports_dir=data_dir
    )
    ports = service.extra["ports"]
    # a restart keeps the ports it got (the nodes know its address)
    args[args.index("--port") + 1] = str(ports["grpc"])
    args += ["--http-port", str(ports["http"])]
    return Coordinator(service, f"127.0.0.1:{ports['grpc']}", data_dir, service.base_url, args)


def register(data_dir: Path, pki: Any, db: str | None = None) -> None:
    config = data_dir.parent / "orgs.toml"
    lines = []
    for org_id, (name, level) in ORGS.items():
        lines += [
            "[[organisation]]",
            f'credentials = "{pki.org_dirs[org_id]}"',
            f'name = "{name}"',
            f'level = "{level}"',
            "",
        ]
    config.write_text("\n".join(lines))
    args = ["coordinator", "register-org", "--data-dir", str(data_dir), "--config", str(config)]
    if db:
        args += ["--db", db]
    run_ipjms(*args)


# argon2id at OWASP's minimum, as in the demo's region (trust/password_hashing.py): a test region
# enrols up to 72 patients, at ~0.2 CPU-s a hash with the RFC 9106 default
CONSENT_ENV = {"IPJMS_CONSENT_PASSWORD_HASH": "owasp-minimum"}


def consent_args(root: Path, pki: Any, port: int, url: str) -> list[str]:
    return ["consent", "serve", "--data-dir", str(root / "consent"), "--port", str(port),
            "--ca-dir", str(pki.ca_dir), "--public-url", url, *registry_org_args(pki)]  # fmt: skip


def registry_org_args(pki: Any) -> list[str]:
    """The registry signs decisions with its CA-issued key when the PKI issued it one."""
    org_dir = pki.org_dirs.get(REGISTRY_ORG)
    return ["--org-dir", str(org_dir)] if org_dir is not None else []


def start_consent(root: Path, pki: Any) -> tuple[str, Service]:
    data_dir = root / "consent"
    args = ["consent", "serve", "--data-dir", str(data_dir), "--port", "0",
            "--ca-dir", str(pki.ca_dir), *registry_org_args(pki)]  # fmt: skip
    service = start_service(
        "consent", args, base_url="http://127.0.0.1:{http}", log_dir=root / "logs",
        ports_dir=data_dir, env=CONSENT_ENV,
    )  # fmt: skip
    return service.base_url, service


NODE_ORGS = ("hosp-a", "clinic-b", "clinic-c")


def start_pseudonym_authority(root: Path, pki: Any) -> Service:
    """``ipjms pseudonym serve``: the authority's OPRF, for the region's nodes only."""
    data_dir = root / "pseudonym"
    clients = [a for org in NODE_ORGS for a in ("--client", org)]
    return start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(data_dir), "--port", "0",
         "--ca-dir", str(pki.ca_dir), "--org-id", "authority", *clients],
        base_url="http://127.0.0.1:{http}", log_dir=root / "logs", ports_dir=data_dir,
        env=BULK_LOAD_BUDGET,  # a test region seeds its patients in seconds: a bulk load
    )  # fmt: skip


def bare_patient_bundle(pid: str, national_id: str) -> dict[str, Any]:
    """A transaction of one Patient ``pid`` with only its national identifier: a node's own,
    earlier record of a patient another node refers (so an import links to it)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": pid,
                    "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": national_id}],
                },
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            }
        ],
    }


def patient_bundle(national_id: str, *, name: str, extra_conditions: int = 0) -> dict[str, Any]:
    """A heart-failure patient: Patient, Conditions, Observations, medication, procedure,
    allergy, encounter — more classes than any consent in these tests permits."""
    pid = f"p-{national_id}"
    ref = {"reference": f"Patient/{pid}"}
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid,
         "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": national_id}],
         "name": [{"family": name.split()[-1], "given": name.split()[:-1]}],
         "gender": "female", "birthDate": "1951-03-14"},
        {"resourceType": "Condition", "id": f"hf-{national_id}", "subject": ref,
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure"}]}},
        {"resourceType": "Observation", "id": f"bnp-{national_id}", "status": "final", "subject": ref,
         "code": {"coding": [{"system": "http://loinc.org", "code": "33762-6", "display": "NT-proBNP"}]},
         "valueQuantity": {"value": 1873, "unit": "pg/mL", "system": "http://unitsofmeasure.org", "code": "pg/mL"}},
        {"resourceType": "MedicationStatement", "id": f"med-{national_id}", "status": "active", "subject": ref,
         "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C03CA01", "display": "furosemide"}]}},
        {"resourceType": "Procedure", "id": f"proc-{national_id}", "status": "completed", "subject": ref,
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "40701008", "display": "Echocardiography"}]}},
        {"resourceType": "AllergyIntolerance", "id": f"alg-{national_id}", "patient": ref,
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005", "display": "Penicillin allergy"}]}},
    ]  # fmt: skip
    for i in range(extra_conditions):
        resources.append(
            {"resourceType": "Observation", "id": f"obs{i}-{national_id}", "status": "final", "subject": ref,
             "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
             "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}
        )  # fmt: skip
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def seed(node: NodeProc, bundle: dict[str, Any]) -> None:
    r = httpx.post(
        f"{node.url}/fhir",
        json=bundle,
        headers={**node.headers(), "Content-Type": FHIR},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    wait_until(predicate, timeout, interval=0.2, what=what)


def start_region(
    pki: Any,
    root: Path,
    *,
    nodes: tuple[tuple[str, str], ...] | None = None,
    node_env: dict[str, dict[str, str]] | None = None,
) -> Region:
    """Consent registry, coordinator (leases of 3 s so redelivery is quick) and nodes."""
    consent_url, consent_service = start_consent(root, pki)
    try:
        authority = start_pseudonym_authority(root, pki)
    except Exception:
        consent_service.stop()
        raise
    net = Region(root, pki, consent_url, consent_service, authority)
    try:
        data_dir = root / "coordinator"
        data_dir.mkdir()
        register(data_dir, pki)
        net.coordinator = start_coordinator_process(
            data_dir, pki, root / "logs", "--consent-url", consent_url, "--lease-seconds", "3"
        )
        for org_id, level in nodes or (
            ("hosp-a", "tertiary"),
            ("clinic-b", "community"),
            ("clinic-c", "community"),
        ):
            net.start_node(org_id, level, (node_env or {}).get(org_id))
    except Exception:
        net.stop()
        raise
    return net
