"""The patient's care pages (issue 16 over issue 15's APIs), in process: the real node app of
``node.app.create_app`` (SQLite in a temp dir) through FastAPI's TestClient; a node-local patient
account signs in through ``/app/sign-in`` as the pages do. Checks what a page changes in the
store and what it shows; a POST without the CSRF token is refused; the CSP header is sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from node.app import create_app
from node.patient.tables import education_read
from node.settings import load_settings

PASSWORD = "a long patient password 7"
PID = "p-care-pages"
HF = "https://ipjms.example.org/fhir/PlanDefinition/heart-failure"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None
    return found.group(1)


class Patient:
    def __init__(self, app: Any, client: TestClient) -> None:
        self.app, self.client, self.store = app, client, app.state.store
        self.csrf = ""

    def get(self, path: str) -> Any:
        r = self.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:400])
        self.csrf = _csrf(r.text)
        return r

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True) -> Any:
        body = dict(data or {})
        if csrf:
            body["csrf_token"] = self.csrf
        return self.client.post(path, data=body, follow_redirects=True)


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Patient]:
    folder: Path = tmp_path_factory.mktemp("care-pages")
    settings = load_settings(folder / "node", org_id="org-pages", name="Pages clinic")
    app = create_app(settings)
    store = app.state.store
    store.update("Patient", PID, {"resourceType": "Patient", "id": PID,
                 "name": [{"family": "Wang", "given": ["Fang"]}]}, writer="test:seed")  # fmt: skip
    store.create({"resourceType": "CarePlan", "status": "active", "intent": "plan",
                  "instantiatesCanonical": [HF], "subject": {"reference": f"Patient/{PID}"}},
                 writer="test:seed")  # fmt: skip
    app.state.auth.accounts.add_user("wang-fang", PASSWORD, "patient", patient_id=PID)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        me = Patient(app, client)
        me.get("/app/sign-in")
        r = client.post("/app/sign-in", data={"username": "wang-fang", "password": PASSWORD,
                        "csrf_token": me.csrf}, follow_redirects=False)  # fmt: skip
        assert r.status_code == 303, r.text
        yield me


def _handles(html: str, action: str) -> list[str]:
    return re.findall(rf'action="/app/me/{action}/([^/"]+)/', html)


def test_education_lists_my_items_in_both_languages_and_mark_read_persists(
    patient: Patient,
) -> None:
    page = patient.get("/app/me/education")
    assert "少盐饮食" in page.text  # the heart-failure plan's diet item, in Chinese (default)
    assert "Content-Security-Policy" in page.headers
    assert "script-src" in page.headers["Content-Security-Policy"]
    handles = _handles(page.text, "education")
    assert handles and not any(h.startswith("hf-") for h in handles)  # opaque, not item ids
    assert patient.post("/app/language", {"lang": "en"}).status_code == 200
    page = patient.get("/app/me/education")
    assert "Eat less salt" in page.text
    first = _handles(page.text, "education")[0]
    refused = patient.post(f"/app/me/education/{first}/read", csrf=False)
    assert refused.status_code == 403
    engine = patient.app.state.services.engine
    with engine.connect() as conn:
        assert conn.execute(select(education_read)).all() == []
    r = patient.post(f"/app/me/education/{first}/read")
    assert r.status_code == 200, r.text[:400]
    with engine.connect() as conn:
        rows = conn.execute(select(education_read.c.patient_id, education_read.c.item_id)).all()
    assert [(row.patient_id, row.item_id) for row in rows] == [(PID, "hf-diet")]
    assert "Read on" in r.text and len(_handles(r.text, "education")) == len(handles) - 1
    assert patient.post("/app/me/education/not-a-handle/read").status_code == 404
