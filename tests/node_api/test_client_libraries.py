"""Two maintained third-party FHIR client libraries drive the node exactly as their documentation
shows (issue 17, must-show 1): ``fhirpy`` (sync and async: CRUD, conditional create, PATCH,
search with paging, includes, ``_has``, ``_elements``, history, a transaction, ``$everything``,
``$validate``, conditional update and delete) and ``fhirclient`` (the SMART on FHIR Python client:
discovery from the CapabilityStatement, the authorization-code + PKCE standalone launch, refresh,
its resource models, and a Backend Services token). One real node served by uvicorn on
loopback for the module (a thread of this process), so the libraries make real HTTP requests.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation as SmartObservation
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome as FhirpyOutcome

from node.app import create_app
from node.settings import load_settings
from node_api.node_harness import FAST_HASHER, PASSWORD
from servicekit.ports import bind_listener

REDIRECT = "http://127.0.0.1:9/smart-callback"


class Served:
    def __init__(self, base: str, app: Any) -> None:
        self.base, self.app = base, app
        self.fhir = f"{base}/fhir"

    def password_token(self, username: str) -> str:
        r = httpx.post(
            f"{self.base}/auth/token",
            data={"grant_type": "password", "username": username, "password": PASSWORD},
        )
        r.raise_for_status()
        return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    sock = bind_listener("127.0.0.1", 0)  # the OS picks; held until the server takes it
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    data_dir: Path = tmp_path_factory.mktemp("libs") / "node"
    app = create_app(load_settings(data_dir, org_id="org-libs", port=port, public_url=base))
    accounts = app.state.auth.accounts
    accounts.hasher = FAST_HASHER
    accounts.add_user("doctor1", PASSWORD, "doctor", fhir_user="Practitioner/d-1")
    app.state.auth.apps.add_app("smart-py", [REDIRECT], name="fhirclient test app")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "node did not start"
        time.sleep(0.05)
    try:
        yield Served(base, app)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def fhirpy_client(served: Served) -> SyncFHIRClient:
    # as fhirpy's README: SyncFHIRClient(url, authorization="Bearer TOKEN")
    return SyncFHIRClient(served.fhir, authorization=f"Bearer {served.password_token('doctor1')}")


def test_fhirpy_crud_conditional_create_patch_history(fhirpy_client: SyncFHIRClient) -> None:
    client = fhirpy_client
    patient = client.resource(
        "Patient",
        identifier=[{"system": "urn:libs", "value": "fp-1"}],
        name=[{"family": "Fhirpy", "given": ["Sync"]}],
        gender="female",
    )
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    patient["birthDate"] = "1980-02-03"
    patient.save()  # update (PUT)
    assert client.reference("Patient", patient.id).to_resource()["birthDate"] == "1980-02-03"
    patient.patch(active=True)  # PATCH with the changed fields (a merge patch)
    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["active"] is True and fetched["meta"]["versionId"] == "3"
    # conditional create, as documented: resource.create(identifier=…) — once, not three times
    for _ in range(3):
        twin = client.resource("Patient", identifier=[{"system": "urn:libs", "value": "fp-1"}])
        twin.create(identifier="urn:libs|fp-1")
        assert twin.id == patient.id
    assert len(client.resources("Patient").search(identifier="urn:libs|fp-1").fetch()) == 1
    history = client.execute(f"Patient/{patient.id}/_history", method="get")
    assert history["type"] == "history" and history["total"] == 3
    assert patient.is_valid()  # $validate
    bad = client.resource("Patient", gender="robot")
    assert not bad.is_valid()
    scratch = client.resource("Patient", name=[{"family": "Scratch"}])
    scratch.save()
    scratch.delete()
    with pytest.raises(Exception):  # noqa: B017  (fhirpy raises ResourceNotFound for 410)
        client.reference("Patient", scratch.id).to_resource()


def test_fhirpy_search_paging_includes_transaction_everything(
    fhirpy_client: SyncFHIRClient,
) -> None:
    client = fhirpy_client
    ids = []
    for n in range(5):
        p = client.resource(
            "Patient",
            name=[{"family": f"Pager{n}"}],
            identifier=[{"system": "urn:pager", "value": str(n)}],
        )
        p.save()
        ids.append(p.id)
    for pid in ids[:2]:
        client.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            subject={"reference": f"Patient/{pid}"},
            effectiveDateTime="2024-05-01T08:00:00Z",
            valueQuantity={
                "value": 61,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        ).save()
    pagers = client.resources("Patient").search(identifier="urn:pager|")
    everything = pagers.limit(2).sort("family").fetch_all()  # follows the next links
    assert [p["name"][0]["family"] for p in everything] == [f"Pager{n}" for n in range(5)]
    assert [p["name"][0]["family"] for p in pagers.sort("-family").limit(2).fetch()] == [
        "Pager4",
        "Pager3",
    ]
    # chained search, _has, _revinclude, _include, _elements — as the search-set builder makes them
    chained = client.resources("Observation").search(**{"subject:Patient.family": "Pager0"}).fetch()
    assert len(chained) == 1
    having = (
        client.resources("Patient")
        .has("Observation", "subject", code="8867-4")
        .search(identifier="urn:pager|")
        .fetch()
    )
    assert {p.id for p in having} == set(ids[:2])
    raw = (
        client.resources("Patient")
        .search(_id=ids[0])
        .revinclude("Observation", "subject")
        .fetch_raw()
    )
    assert {e["resource"]["resourceType"] for e in raw["entry"]} == {"Patient", "Observation"}
    slim = client.resources("Patient").search(_id=ids[0]).elements("name").fetch()[0]
    assert set(slim) <= {"resourceType", "id", "meta", "name"}
    # a transaction POSTed to the base URL (fhirpy sends it to …/fhir/)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": "InTransaction"}]},
            }
        ],
    }
    answer = client.execute("", method="post", data=bundle)
    assert answer["type"] == "transaction-response" and answer["entry"][0]["response"][
        "status"
    ].startswith("201")
    # $everything the way the client does it by default (POST)
    record = client.reference("Patient", ids[0]).execute("$everything")
    assert {e["resource"]["resourceType"] for e in record["entry"]} == {"Patient", "Observation"}
    # conditional update and delete through a search set
    pagers4 = client.resources("Patient").search(identifier="urn:pager|4")
    updated, created = pagers4.update(
        client.resource(
            "Patient",
            name=[{"family": "Pager4b"}],
            identifier=[{"system": "urn:pager", "value": "4"}],
        )
    )
    assert not created and updated.id == ids[4]
    pagers4.delete()
    assert client.resources("Patient").search(identifier="urn:pager|4").fetch() == []
    # bad input comes back as an OperationOutcome the library raises
    with pytest.raises(FhirpyOutcome):
        client.resources("Patient").search(nosuch="x").fetch()


def test_fhirpy_async(served: Served) -> None:
    async def run() -> tuple[str, int]:
        client = AsyncFHIRClient(
            served.fhir, authorization=f"Bearer {served.password_token('doctor1')}"
        )
        patient = client.resource("Patient", name=[{"family": "Async"}], gender="male")
        await patient.save()
        found = await client.resources("Patient").search(family="Async").fetch()
        return str(patient.id), len(found)

    pid, n = asyncio.run(run())
    assert pid and n == 1


def _browser_sign_in(authorize_url: str, username: str, patient: str | None) -> str:
    """What the user does in the browser: the sign-in form (and picker); returns the redirect."""
    with httpx.Client(follow_redirects=False) as browser:
        page = browser.get(authorize_url)
        assert page.status_code == 200, page.text

        def hidden(text: str) -> dict[str, str]:
            pairs = re.findall(r"<input type='hidden' name='([^']*)' value='([^']*)'>", text)
            return {unescape(k): unescape(v) for k, v in pairs}

        action = authorize_url.split("?")[0]
        r = browser.post(
            action, data={**hidden(page.text), "username": username, "password": PASSWORD}
        )
        if patient is not None:
            r = browser.post(action, data={**hidden(r.text), "patient": patient})
        assert r.status_code == 303, r.text
        return str(r.headers["location"])


def test_fhirclient_smart_standalone_launch_and_models(
    served: Served, fhirpy_client: SyncFHIRClient
) -> None:
    p = fhirpy_client.resource("Patient", name=[{"family": "Launched", "given": ["Via"]}])
    p.save()
    fhirpy_client.resource(
        "Observation",
        status="final",
        subject={"reference": f"Patient/{p.id}"},
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        valueQuantity={
            "value": 70,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    ).save()
    # as fhirclient's README: settings → FHIRClient → authorize_url → handle_callback
    settings = {
        "app_id": "smart-py",
        "api_base": served.fhir,
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser offline_access patient/*.read",
    }
    smart = smart_client.FHIRClient(settings=settings)
    assert not smart.ready
    authorize_url = smart.authorize_url  # found in the CapabilityStatement's oauth-uris
    assert authorize_url.startswith(f"{served.base}/auth/authorize?")
    assert "code_challenge_method=S256" in authorize_url and "launch%2Fpatient" in authorize_url
    callback = _browser_sign_in(authorize_url, "doctor1", patient=p.id)
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == p.id
    patient = SmartPatient.read(p.id, smart.server)
    assert patient.name[0].family == "Launched"
    search = SmartObservation.where(struct={"subject": f"Patient/{p.id}"})
    observations = list(search.perform_resources_iter(smart.server))
    assert len(observations) == 1 and observations[0].valueQuantity.value == 70
    assert smart.reauthorize()  # refresh token grant
    assert smart.patient_id == p.id and SmartPatient.read(p.id, smart.server).id == p.id


def test_fhirclient_backend_services_token(served: Served) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    served.app.state.auth.accounts.add_client("py-backend", pem, "system/Patient.rs")
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": "py-backend",
            "sub": "py-backend",
            "aud": f"{served.base}/auth/token",
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        },  # no iat: optional in SMART Backend Services
        key,
        algorithm="RS384",
        headers={"kid": "k1"},
    )
    smart = smart_client.FHIRClient(
        settings={
            "app_id": "py-backend",
            "api_base": served.fhir,
            "jwt_token": assertion,
            "scope": "system/Patient.rs",
        }
    )
    smart.wants_patient = False
    smart.prepare()
    smart.authorize()  # client_credentials with the assertion, at the discovered token URL
    assert smart.ready
    bundle = smart.server.request_json("Patient?_count=1")
    assert bundle["resourceType"] == "Bundle"
