"""The consent registry over HTTP (in-process ASGI app, SQLite and PostgreSQL):
decisions, signed tokens, revocation, break-glass, enrolment, isolation (must-show 5)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from consent_harness import Registry, treat_consent

from consent.client import ConsentRegistryError
from consent.decision_token import DecisionTokenError, request_hash, verify_decision_token

P1, P2 = "a1" * 32, "b2" * 32


def test_grant_decide_verify_offline_and_revoke(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    consent = registry.grant(headers, treat_consent(P1, classes=("Condition", "Observation")))
    hosp = registry.org("hosp-a")

    d = hosp.decide(P1, "clinic-b", "TREAT", ["Condition", "Observation", "Procedure"])
    assert d.permit and d.classes == {"Condition", "Observation"}
    assert d.refused_classes == {"Procedure"} and d.consent_ids == (consent["id"],)

    # A receiving node verifies offline with the JWKS alone (no call to the registry).
    jwks = registry.http.get("/.well-known/jwks.json").json()
    expected = request_hash(
        P1, "hosp-a", "clinic-b", "TREAT", ["Condition", "Observation", "Procedure"]
    )
    offline = verify_decision_token(d.token, jwks, expected_request_hash=expected)
    assert offline.permit and offline.classes == d.classes and offline.patient == P1
    with pytest.raises(DecisionTokenError, match="different request"):
        verify_decision_token(
            d.token,
            jwks,
            expected_request_hash=request_hash(P1, "hosp-a", "clinic-c", "TREAT", ["Condition"]),
        )

    # Other recipient, other purpose: refused.
    assert not hosp.decide(P1, "clinic-c", "TREAT", ["Condition"]).permit
    assert not hosp.decide(P1, "clinic-b", "HRESCH", ["Condition"]).permit

    # Revocation applies to the very next decision.
    r = registry.http.post(f"/fhir/Consent/{consent['id']}/$revoke", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    after = hosp.decide(P1, "clinic-b", "TREAT", ["Condition"])
    assert not after.permit and after.classes == frozenset()

    # Every decision and change is in the ledger, and the chain verifies.
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    report = ledger.verify()
    assert report.ok, report.problem
    kinds = [e.event["type"]["code"] for e in ledger.entries(patient_pseudonym=P1)]
    assert kinds.count("110113") == 4  # four decisions (permit + deny) audited
    assert kinds.count("rest") == 2  # grant and revoke


def test_decision_token_is_tamper_evident(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    registry.grant(headers, treat_consent(P1))
    d = registry.org("hosp-a").decide(P1, "clinic-b", "TREAT", ["Condition"])
    jwks = registry.http.get("/.well-known/jwks.json").json()
    head, payload, sig = d.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["classes"] = ["Condition", "Procedure"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(DecisionTokenError, match="signature"):
        verify_decision_token(f"{head}.{forged}.{sig}", jwks)
    # a key id the JWKS does not hold is refused (another registry's key with the same kid:
    # test_registry_promises.py)
    other = {"keys": [dict(jwks["keys"][0], kid="someone-else")]}
    with pytest.raises(DecisionTokenError, match="unknown key"):
        verify_decision_token(d.token, other)
    # alg none is refused
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"ipjms-consent-decision+jwt"}').rstrip(
        b"="
    )
    with pytest.raises(DecisionTokenError):
        verify_decision_token(f"{none.decode()}.{payload}.", jwks)


def test_patient_cannot_touch_another_patients_consents(registry: Registry) -> None:
    h1, h2 = registry.patient_headers(P1), registry.patient_headers(P2)
    c1 = registry.grant(h1, treat_consent(P1))
    http = registry.http
    assert http.get(f"/fhir/Consent/{c1['id']}", headers=h2).status_code == 404
    assert http.get(f"/fhir/Consent?patient={P1}", headers=h2).status_code == 403
    body = dict(c1, status="inactive")
    r = http.put(f"/fhir/Consent/{c1['id']}", json=body, headers=h2)
    assert r.status_code == 403
    body2 = dict(body, patient={"identifier": {**c1["patient"]["identifier"], "value": P2}})
    assert http.put(f"/fhir/Consent/{c1['id']}", json=body2, headers=h2).status_code == 404
    assert http.post(f"/fhir/Consent/{c1['id']}/$revoke", headers=h2).status_code == 404
    # B cannot grant in A's name
    assert http.post("/fhir/Consent", json=treat_consent(P1), headers=h2).status_code == 403
    # nothing changed: A's consent is intact and still permits
    assert http.get(f"/fhir/Consent/{c1['id']}", headers=h1).json()["status"] == "active"
    assert registry.org("hosp-a").decide(P1, "clinic-b", "TREAT", ["Condition"]).permit
    # disclosures: B's list has none of A's
    mine = http.get("/patients/me/disclosures", headers=h2).json()
    assert mine["patient"] == P2 and mine["total"] == 0
    theirs = http.get("/patients/me/disclosures", headers=h1).json()
    assert theirs["total"] == 1 and theirs["disclosures"][0]["recipient"] == "clinic-b"
    # B's own search returns only B's (none)
    assert http.get("/fhir/Consent", headers=h2).json()["total"] == 0


def test_an_organisation_cannot_grant_or_read_as_a_patient(registry: Registry) -> None:
    registry.grant(registry.patient_headers(P1), treat_consent(P1))
    org_token = registry.org("hosp-a").access_token(acting_role="doctor")
    doctor = {"Authorization": f"Bearer {org_token}"}
    http = registry.http
    r = http.post("/fhir/Consent", json=treat_consent(P1), headers=doctor)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    assert http.get(f"/fhir/Consent?patient={P1}", headers=doctor).status_code == 403
    assert http.get("/patients/me/disclosures", headers=doctor).status_code == 403
    # and a patient cannot ask for decisions or issue enrolment codes
    patient = registry.patient_headers(P2)
    params = {"resourceType": "Parameters", "parameter": [{"name": "patient", "valueString": P1}]}
    assert http.post("/fhir/Consent/$decide", json=params, headers=patient).status_code == 403
    assert http.post("/enrolment-codes", json={"patient": P1}, headers=patient).status_code == 403
    # an org cannot ask for patient scopes
    assert http.post("/fhir/Consent", json=treat_consent(P1)).status_code == 401


def test_enrolment_code_is_single_use(registry: Registry) -> None:
    code = registry.org("clinic-b").create_enrolment_code(P1)["code"]
    first = registry.http.post("/enrol", json={"code": code, "password": "a long password 1"})
    assert first.status_code == 201
    second = registry.http.post("/enrol", json={"code": code, "password": "another password 2"})
    assert second.status_code == 400 and "already used" in second.json()["issue"][0]["diagnostics"]
    # the first password still works, the second does not
    login = {"username": first.json()["username"], "password": "a long password 1"}
    assert registry.http.post("/auth/patient-token", data=login).status_code == 200
    login["password"] = "another password 2"
    assert registry.http.post("/auth/patient-token", data=login).status_code == 401
    # the code is stored only as a hash
    from sqlalchemy import select

    from consent.schema import enrolment_codes

    with registry.http.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(select(enrolment_codes)).all()
    assert len(rows) == 1 and rows[0].used_at is not None
    assert all(code not in str(value) for value in rows[0])


def test_break_glass_needs_reason_and_clinician_and_is_visible(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    hosp = registry.org("hosp-a")
    with pytest.raises(ConsentRegistryError) as no_reason:
        hosp.decide(P1, "hosp-a", "ETREAT", ["AllergyIntolerance"], acting_role="doctor")
    assert no_reason.value.status == 400
    with pytest.raises(ConsentRegistryError) as not_clinician:
        hosp.decide(P1, "hosp-a", "ETREAT", ["AllergyIntolerance"], reason="unconscious in ED")
    assert not_clinician.value.status == 403
    with pytest.raises(ConsentRegistryError) as admin:
        hosp.decide(
            P1, "hosp-a", "ETREAT", ["Condition"], reason="unconscious in ED", acting_role="admin"
        )
    assert admin.value.status == 403
    with pytest.raises(ConsentRegistryError) as unnamed:  # a clinician, but no user named
        hosp.decide(
            P1, "hosp-a", "ETREAT", ["Condition"], reason="unconscious in ED", acting_role="doctor"
        )
    assert unnamed.value.status == 403

    d = hosp.decide(
        P1,
        "hosp-a",
        "ETREAT",
        ["AllergyIntolerance", "MedicationStatement"],
        reason="unconscious in ED, allergies unknown",
        acting_role="doctor",
        acting_user="u-1234",
    )
    assert d.permit and d.break_glass
    assert d.classes == {"AllergyIntolerance", "MedicationStatement"}
    seen = registry.http.get("/patients/me/disclosures", headers=headers).json()["disclosures"]
    assert len(seen) == 1
    item = seen[0]
    assert item["break_glass"] and item["kind"] == "break-glass"
    assert item["purpose"] == "ETREAT" and item["requester"] == "hosp-a"
    assert item["classes"] == ["AllergyIntolerance", "MedicationStatement"]
    assert "allergies unknown" in item["reason"]
    # the ledger keeps hosp-a's signed statement of its user's role as evidence
    from trust.audit_ledger import AuditLedger
    from trust.backend_auth import verify_org_assertion_claims
    from trust.pki import load_ca_cert

    ledger = AuditLedger(registry.http.app.state.engine)  # type: ignore[attr-defined]
    event = ledger.entries(patient_pseudonym=P1)[-1].event
    details = {d["type"]: d["valueString"] for e in event["entity"] for d in e.get("detail", [])}
    signed = verify_org_assertion_claims(
        details["acting-assertion"],
        ca_cert_pem=load_ca_cert(registry.pki.ca_dir),
        audience=jwt.decode(details["acting-assertion"], options={"verify_signature": False})[
            "aud"
        ],
        replay_cache=None,
    )
    assert signed["sub"] == "hosp-a" and signed["act"] == {"role": "doctor", "sub": "u-1234"}


def test_a_break_glass_pull_is_not_renewed_by_what_was_asked_under_it(
    registry: Registry,
) -> None:
    """One clinician's pull grant carries its record query and the holder's answer, which the
    coordinator's $recheck re-admits for their own envelopes. Neither is a pull grant of its
    own: a $decide under either is refused (even with the pulling organisation as recipient),
    a locator lookup naming one is refused, and the window runs from the clinician's grant — an
    answer asked 23 h in is not re-admitted once that grant is 25 h old."""
    import uuid
    from datetime import UTC, datetime, timedelta

    t0 = datetime.now(UTC)
    now = [t0]
    registry.http.app.state.decisions.clock = lambda: now[0]  # type: ignore[attr-defined]
    clinic, hosp, coordinator = (registry.org(o) for o in ("clinic-c", "hosp-a", "coordinator"))
    cls = ["Condition"]
    pull, query, answer = (str(uuid.uuid4()) for _ in range(3))

    granted = clinic.decide(P1, "clinic-c", "ETREAT", cls, reason="collapsed, history unknown",
                            acting_role="doctor", acting_user="u-7", lookup_id=pull)  # fmt: skip
    assert granted.permit and granted.break_glass and granted.lookup_id == pull
    assert not granted.envelope_id  # the pull's lookup decision (issue 23), no envelope's
    lookup = coordinator.recheck_lookup(pull, "clinic-c", P1)
    assert lookup.permit and lookup.break_glass  # the locator lookup on the clinician's grant
    q = clinic.decide(P1, "clinic-c", "ETREAT", cls, envelope_id=query, pull=pull)
    a = hosp.decide(P1, "clinic-c", "ETREAT", cls, envelope_id=answer, pull=pull)
    assert q.permit and a.permit and "u-7" in q.reason
    for env, sender in ((query, "clinic-c"), (answer, "hosp-a")):
        readmitted = coordinator.recheck(env, sender, "clinic-c")
        assert readmitted.permit and readmitted.break_glass, readmitted.reason

    # the reviewer's chain: no clinician, under the query's (or answer's) envelope, self as
    # recipient — a day later, and at once
    for hours in (0, 23):
        now[0] = t0 + timedelta(hours=hours)
        for carried in (query, answer):
            renewed = clinic.decide(
                P1, "clinic-c", "ETREAT", cls, envelope_id=str(uuid.uuid4()), pull=carried
            )
            assert not renewed.permit and not renewed.break_glass
            assert f"carried from the pull grant {granted.decision_id}" in renewed.reason
        # nor is a carried entry a grant a lookup names
        as_lookup = coordinator.recheck_lookup(query, "clinic-c", P1)
        assert not as_lookup.permit and "an envelope's" in as_lookup.reason

    late = str(uuid.uuid4())  # an answer asked 23 h after the clinician's grant
    assert hosp.decide(P1, "clinic-c", "ETREAT", cls, envelope_id=late, pull=pull).permit
    assert coordinator.recheck(late, "hosp-a", "clinic-c").permit
    now[0] = t0 + timedelta(hours=25)  # the answer is 2 h old, the clinician's grant 25 h
    expired = coordinator.recheck(late, "hosp-a", "clinic-c")
    assert not expired.permit and not expired.break_glass
    # the coordinator is told a neutral deny; the registry's ledger keeps why
    from trust.audit_ledger import AuditLedger

    ledger = AuditLedger(registry.http.app.state.engine)  # type: ignore[attr-defined]
    why = ledger.entries(patient_pseudonym=P1)[-1].event["outcomeDesc"]
    assert f"pull grant {granted.decision_id} that envelope {late}" in why
    assert "not granted within 24 h" in why
    gone = hosp.decide(P1, "clinic-c", "ETREAT", cls, envelope_id=str(uuid.uuid4()), pull=pull)
    assert not gone.permit and "no break-glass pull was granted" in gone.reason


def test_disclosure_reports_are_listed_and_checked(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    registry.grant(headers, treat_consent(P1))
    hosp = registry.org("hosp-a")
    d = hosp.decide(P1, "clinic-b", "TREAT", ["Condition"])
    ok = hosp.report_disclosure(
        P1, "clinic-b", "TREAT", ["Condition"], decision_token=d.token, envelope_id="env-1"
    )
    assert ok["covered_by_decision"] is True
    bad = hosp.report_disclosure(P1, "clinic-b", "TREAT", ["Procedure"], decision_token=d.token)
    assert bad["covered_by_decision"] is False
    kinds = [
        i["kind"]
        for i in registry.http.get("/patients/me/disclosures", headers=headers).json()[
            "disclosures"
        ]
    ]
    assert kinds == ["authorised", "reported", "reported-unlicensed"]


def test_org_authentication_is_refused_without_valid_assertion(registry: Registry) -> None:
    from trust.backend_auth import make_org_assertion

    http = registry.http
    creds = registry.pki.orgs["hosp-a"]
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": make_org_assertion(creds, "http://testserver/auth/token"),
    }
    assert http.post("/auth/token", data=form).status_code == 200
    replay = http.post("/auth/token", data=form)
    assert replay.status_code == 401 and "replay" in replay.json()["issue"][0]["diagnostics"]
    form["client_assertion"] = make_org_assertion(creds, "http://elsewhere/auth/token")
    assert http.post("/auth/token", data=form).status_code == 401
    form["client_assertion"] = make_org_assertion(creds, "http://testserver/auth/token")
    form["scope"] = "patient/Consent.cruds"
    assert http.post("/auth/token", data=form).status_code == 403
    # a forged bearer token is refused
    assert (
        http.get("/patients/me/disclosures", headers={"Authorization": "Bearer x.y.z"}).status_code
        == 401
    )


def test_expired_enrolment_code_is_refused(registry: Registry) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from consent.schema import enrolment_codes

    code = registry.org("hosp-a").create_enrolment_code(P2)["code"]
    with registry.http.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            update(enrolment_codes).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = registry.http.post("/enrol", json={"code": code, "password": "a long password 1"})
    assert r.status_code == 400 and "expired" in r.json()["issue"][0]["diagnostics"]
    login = {"username": P2, "password": "a long password 1"}
    assert registry.http.post("/auth/patient-token", data=login).status_code == 401


def test_password_hashing_runs_off_the_event_loop(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login's argon2 verify (~0.2 CPU-s) must not hold up the registry's other requests:
    here a login is held inside its password check until another request has been answered.
    On the event loop the other request could not be answered first."""
    import threading

    creds = registry.enrol(P1)
    inside, release = threading.Event(), threading.Event()
    accounts = registry.http.app.state.accounts  # type: ignore[attr-defined]
    real = accounts._hasher

    class HeldHasher:
        def verify(self, stored: str, password: str) -> bool:
            inside.set()
            if not release.wait(15):
                raise RuntimeError("the password check held up the other request")
            return real.verify(stored, password)

        def check_needs_rehash(self, stored: str) -> bool:
            return real.check_needs_rehash(stored)

    monkeypatch.setattr(accounts, "_hasher", HeldHasher())
    result: dict[str, int] = {}
    login = threading.Thread(
        target=lambda: result.setdefault(
            "status", registry.http.post("/auth/patient-token", data=creds).status_code
        )
    )
    login.start()
    assert inside.wait(15), "the login never reached its password check"
    assert registry.http.get("/healthz").status_code == 200
    release.set()
    login.join(30)
    assert result.get("status") == 200
