"""Must-show 6: bad input to every consent API → 4xx OperationOutcome, and nothing stored."""

from __future__ import annotations

import copy
from typing import Any

from consent_harness import Registry, treat_consent
from sqlalchemy import func, select

from consent.schema import consents, enrolment_codes, patients

P1 = "c3" * 32


def snapshot(registry: Registry) -> tuple[Any, ...]:
    app = registry.http.app
    with app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        counts = tuple(
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (consents, patients, enrolment_codes)
        )
        bodies = tuple(conn.execute(select(consents.c.version, consents.c.body)).all())
        used = tuple(conn.execute(select(enrolment_codes.c.used_at)).all())
    return counts, bodies, used, app.state.ledger.count()  # type: ignore[attr-defined]


def assert_outcome(response: Any, status: int | tuple[int, ...] = 400, what: str = "") -> None:
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, (what, response.status_code, response.text)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["diagnostics"]


def _mutate(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


NESTED = ["provision", "provision", 0]
BAD_CONSENTS = {
    "unknown purpose": (NESTED + ["purpose", 0, "code"], "MARKETING"),
    "unknown class": (NESTED + ["class", 0, "code"], "Spaceship"),
    "class not a resource type we allow": (NESTED + ["class", 0, "code"], "Account"),
    "period ends before it starts": (
        ["provision", "period"],
        {"start": "2026-06-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
    ),
    "nested period ends before it starts": (
        NESTED + ["period"],
        {"start": "2026-06-01", "end": "2026-01-01"},
    ),
    "missing patient": (["patient"], KeyError),
    "patient by national id": (["patient", "identifier", "system"], "urn:oid:national"),
    "bad pseudonym": (["patient", "identifier", "value"], "../../etc"),
    "missing status": (["status"], KeyError),
    "unknown status": (["status"], "maybe"),
    "wrong scope": (["scope", "coding", 0, "code"], "research"),
    "missing category": (["category"], KeyError),
    "provision type": (["provision", "type"], "allow"),
    "actor not an organisation": (NESTED + ["actor", 0, "reference", "reference"], "Patient/1"),
    "actor role not recipient": (NESTED + ["actor", 0, "role", "coding", 0, "code"], "AUT"),
    "purpose from another system": (NESTED + ["purpose", 0, "system"], "http://example.org"),
    "too deeply nested": (NESTED + ["provision"], [{"type": "deny"}]),
    "bad date": (["provision", "period"], {"start": "yesterday"}),
    "not a Consent": (["resourceType"], "Patient"),
    "R4B structure": (["provision", "actor"], "everyone"),
}


def test_bad_consents_are_refused_on_create_and_update(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    existing = registry.grant(headers, treat_consent(P1))
    before = snapshot(registry)
    for case, (path, value) in sorted(BAD_CONSENTS.items()):
        bad = _mutate(treat_consent(P1), path, value)
        r = registry.http.post("/fhir/Consent", json=bad, headers=headers)
        assert_outcome(r, what=case)
        bad_update = _mutate(existing, path, value)
        status = (400, 403) if "patient" in case or "pseudonym" in case else 400
        r = registry.http.put(f"/fhir/Consent/{existing['id']}", json=bad_update, headers=headers)
        assert_outcome(r, status, what=case)
        assert snapshot(registry) == before, case


def test_malformed_bodies_and_parameters(registry: Registry) -> None:
    http = registry.http
    headers = registry.patient_headers(P1)
    existing = registry.grant(headers, treat_consent(P1))
    org = {"Authorization": "Bearer " + registry.org("hosp-a").access_token(acting_role="doctor")}
    before = snapshot(registry)
    cid = existing["id"]

    def decide(*params: dict[str, Any], body: Any = None) -> Any:
        payload = (
            body if body is not None else {"resourceType": "Parameters", "parameter": list(params)}
        )
        return http.post("/fhir/Consent/$decide", json=payload, headers=org)

    p = {"name": "patient", "valueString": P1}
    r_ = {"name": "recipient", "valueString": "clinic-b"}
    t = {"name": "purpose", "valueCode": "TREAT"}
    c = {"name": "class", "valueCode": "Condition"}
    cases = [
        http.post("/fhir/Consent", content=b"{not json", headers=headers),
        http.post("/fhir/Consent", json=[1, 2], headers=headers),
        http.post("/fhir/Consent", content=b"", headers=headers),
        http.put(f"/fhir/Consent/{cid}", json=dict(existing, id="other"), headers=headers),
        http.put(f"/fhir/Consent/{cid}", json=existing, headers={**headers, "If-Match": "3"}),
        http.get("/fhir/Consent?colour=blue", headers=headers),
        http.get("/fhir/Consent?_count=lots", headers=headers),
        decide(body={"resourceType": "Bundle"}),
        decide(body=[]),
        decide(r_, t, c),  # no patient
        decide(p, t, c),  # no recipient
        decide(p, r_, c),  # no purpose
        decide(p, r_, t),  # no class
        decide(p, r_, {"name": "purpose", "valueCode": "MARKETING"}, c),
        decide(p, r_, t, {"name": "class", "valueCode": "Spaceship"}),
        decide(p, p, r_, t, c),  # patient twice
        decide(p, r_, t, c, {"name": "colour", "valueString": "blue"}),
        decide({"name": "patient", "valueString": "no/slashes"}, r_, t, c),
        decide(p, {"name": "recipient", "valueString": "a b"}, t, c),
        decide(p, r_, t, {"name": "class", "valueBoolean": True}),
        decide(p, r_, {"name": "purpose", "valueCode": "ETREAT"}, c),  # break-glass, no reason
        http.post("/enrolment-codes", json={}, headers=org),
        http.post("/enrolment-codes", json={"patient": "../x"}, headers=org),
        http.post("/enrolment-codes", json={"patient": P1, "name": "Jane"}, headers=org),
        http.post("/enrol", json={"code": "AAAA-BBBB-CCCC-DDDD", "password": "long enough pw"}),
        http.post("/enrol", json={"code": "", "password": "long enough pw"}),
        http.post("/enrol", content=b"code=1"),
        http.post("/auth/token", data={"grant_type": "password"}),
        http.post("/auth/token", data={"grant_type": "client_credentials"}),
        http.post("/auth/token", json={"grant_type": "client_credentials"}),
        http.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": "garbage",
            },
        ),
        http.post("/auth/patient-token", data={"username": ""}),
        http.post(
            "/disclosures",
            json={"patient": P1, "recipient": "clinic-b", "purpose": "X", "classes": ["Condition"]},
            headers=org,
        ),
        http.post(
            "/disclosures",
            json={
                "patient": P1,
                "recipient": "clinic-b",
                "purpose": "TREAT",
                "classes": ["Spaceship"],
            },
            headers=org,
        ),
        http.post(
            "/disclosures",
            json={
                "patient": P1,
                "recipient": "clinic-b",
                "purpose": "TREAT",
                "classes": ["Condition"],
                "decision_token": "x.y.z",
            },
            headers=org,
        ),
        http.post(
            "/disclosures",
            json={"recipient": "clinic-b", "purpose": "TREAT", "classes": []},
            headers=org,
        ),
    ]
    for i, response in enumerate(cases):
        assert 400 <= response.status_code < 500, (i, response.status_code, response.text)
        assert response.json()["resourceType"] == "OperationOutcome", (i, response.text)
    # short password with a valid code: refused, and the code is NOT burnt by the failure
    code = registry.org("hosp-a").create_enrolment_code("d4" * 32)["code"]
    assert_outcome(http.post("/enrol", json={"code": code, "password": "short"}))
    assert (
        http.post("/enrol", json={"code": code, "password": "now long enough"}).status_code == 201
    )
    counts, bodies, used, ledger = snapshot(registry)
    assert bodies == before[1] and ledger == before[3]
    assert counts[0] == before[0][0]  # no consent stored


def test_oversized_body_is_413(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    before = snapshot(registry)
    big = treat_consent(P1)
    big["text"] = {"status": "generated", "div": "<div>" + "x" * 300_000 + "</div>"}
    assert_outcome(registry.http.post("/fhir/Consent", json=big, headers=headers), 413)
    assert snapshot(registry) == before


def test_wrong_password_is_401_and_audited(registry: Registry) -> None:
    creds = registry.enrol(P1)
    before = snapshot(registry)
    r = registry.http.post("/auth/patient-token", data={**creds, "password": "wrong password!"})
    assert_outcome(r, 401)
    after = snapshot(registry)
    assert after[:3] == before[:3] and after[3] == before[3] + 1
    last = registry.http.app.state.ledger.entries()[-1]  # type: ignore[attr-defined]
    assert last.event["type"]["code"] == "110114" and last.patient_pseudonym is None
