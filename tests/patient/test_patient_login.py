"""Issue 15 must-show 1: one regional patient login.

A patient enrolled at the registry (code from the node that knows them) signs in once through
the registry's OpenID Connect flow (authorization code + PKCE) and with that one token reads
their plan at the node and changes a consent at the registry. A token for patient A is refused
on every route of the node's route table aimed at patient B's data. Failed logins lock the
account. Real registry process over HTTP; the node pins the registry's key.
"""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jwt
from patient.region_harness import (
    CLIENT_ID,
    FREE_FAILURES,
    PATIENT_PASSWORD,
    REDIRECT,
    Region,
    authorize_params,
    pkce_pair,
    sign_in,
)

from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from trust.tokens import TokenIssuer, load_or_create_signing_key


def _plan(region: Region, patient_id: str) -> dict[str, Any]:
    return dict(
        region.store.create(
            {
                "resourceType": "CarePlan",
                "status": "active",
                "intent": "plan",
                "subject": {"reference": f"Patient/{patient_id}"},
                "title": f"plan of {patient_id}",
            },
            writer="test",
        ).resource
    )


def test_one_sign_in_reads_the_plan_at_the_node_and_changes_a_consent(region: Region) -> None:
    plan = _plan(region, region.a.patient_id)
    a = region.a
    r = region.node.get(f"/fhir/CarePlan?patient={a.patient_id}", headers=a.headers)
    assert r.status_code == 200, r.text
    found = [e["resource"] for e in r.json()["entry"]]
    assert plan["id"] in {p["id"] for p in found}
    assert {p["subject"]["reference"] for p in found} == {f"Patient/{a.patient_id}"}
    r = region.node.get(f"/fhir/CarePlan/{plan['id']}", headers=a.headers)
    assert r.status_code == 200 and r.json()["title"] == plan["title"]

    permit = Provision("permit", actors=frozenset({"org-test"}), purposes=frozenset({"TREAT"}))
    consent = to_fhir(ConsentRecord("x", a.pseudonym, "active", permit))
    del consent["id"]
    r = httpx.post(f"{region.registry}/fhir/Consent", json=consent, headers=a.headers)
    assert r.status_code == 201, r.text
    r = httpx.get(f"{region.registry}/patients/me/disclosures", headers=a.headers)
    assert r.status_code == 200 and r.json()["patient"] == a.pseudonym


def test_id_token_is_for_the_client_and_carries_the_nonce(region: Region) -> None:
    jwks = httpx.get(f"{region.registry}/oidc/jwks.json").json()
    config = httpx.get(f"{region.registry}/.well-known/openid-configuration").json()
    assert config["code_challenge_methods_supported"] == ["S256"]
    key = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(
        region.a.id_token, key, algorithms=["ES256"], audience=CLIENT_ID, issuer=config["issuer"]
    )
    assert claims["sub"] == region.a.pseudonym and claims["nonce"] == "n-1"
    # an ID token is not an access token: neither the node nor the registry accepts it
    bearer = {"Authorization": f"Bearer {region.a.id_token}"}
    assert region.node.get("/fhir/CarePlan", headers=bearer).status_code == 401
    assert (
        httpx.get(f"{region.registry}/patients/me/disclosures", headers=bearer).status_code == 401
    )


def test_codes_are_single_use_and_bound_to_the_verifier(region: Region) -> None:
    verifier, challenge = pkce_pair()
    params = authorize_params(challenge)
    r = httpx.post(
        f"{region.registry}/oidc/authorize",
        data={**params, "username": region.a.username, "password": PATIENT_PASSWORD},
    )
    code = httpx.URL(r.headers["location"]).params["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID}  # fmt: skip
    wrong = httpx.post(
        f"{region.registry}/oidc/token", data={**form, "code_verifier": pkce_pair()[0]}
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # the failed attempt burnt the code: the right verifier is too late now
    again = httpx.post(f"{region.registry}/oidc/token", data={**form, "code_verifier": verifier})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # an unregistered redirect URI is answered at the registry, never redirected to
    bad = httpx.get(
        f"{region.registry}/oidc/authorize",
        params={**params, "redirect_uri": "https://evil.example/cb"},
    )
    assert bad.status_code == 400 and "location" not in bad.headers
    # PKCE is required
    plain = httpx.get(
        f"{region.registry}/oidc/authorize", params={**params, "code_challenge_method": "plain"}
    )
    assert plain.status_code == 400


def test_failed_logins_lock_the_account_whatever_the_user_name(region: Region) -> None:
    for username in ("p-unknown1", None):
        user = username or _fresh_patient_username(region)
        statuses = []
        for _ in range(FREE_FAILURES):
            r = httpx.post(
                f"{region.registry}/auth/patient-token",
                data={"username": user, "password": "wrong password!!"},
            )
            statuses.append(r.status_code)
        assert statuses == [401] * FREE_FAILURES
        locked = httpx.post(
            f"{region.registry}/auth/patient-token",
            data={"username": user, "password": PATIENT_PASSWORD},
        )
        assert locked.status_code == 429, locked.text
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        assert locked.json()["resourceType"] == "OperationOutcome"
        # the OpenID Connect sign-in counts against the same account
        verifier, challenge = pkce_pair()
        r = httpx.post(
            f"{region.registry}/oidc/authorize",
            data={**authorize_params(challenge), "username": user, "password": PATIENT_PASSWORD},
        )
        assert r.status_code == 429
    # another account is not affected
    assert sign_in(region.registry, region.b.username)["access_token"]


def _fresh_patient_username(region: Region) -> str:
    """A patient of its own, so locking it does not disturb the other tests."""
    from node.identity import NATIONAL_ID_SYSTEM

    patient = region.store.create(
        {"resourceType": "Patient",
         "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": f"NID-L-{time.time_ns()}"}]},
        writer="test",
    ).resource  # fmt: skip
    r = region.node.post(
        "/consent/enrolment-code", json={"patient": patient["id"]}, headers=region.doctor
    )
    code = r.json()["code"]
    r = httpx.post(f"{region.registry}/enrol", json={"code": code, "password": PATIENT_PASSWORD})
    return str(r.json()["username"])


def test_forged_and_unpinned_registry_tokens_are_refused(region: Region, tmp_path: Path) -> None:
    """A token shaped like the registry's but signed by another key is refused (401)."""
    forged_key = load_or_create_signing_key(tmp_path / "access-token.pem")  # same kid, new key
    claims = jwt.decode(region.a.headers["Authorization"].split()[1],
                        options={"verify_signature": False})  # fmt: skip
    forged = TokenIssuer(claims["iss"], forged_key).issue(
        region.b.pseudonym, "x", scopes=claims["scope"].split(),
        claims={"kind": "patient", "aud": claims["aud"]},
    )  # fmt: skip
    r = region.node.get("/fhir/Observation", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


# Routes that serve no patient's data: those the access table declares public (allow ["*"]:
# metadata, discovery, token and sign-in endpoints).
_TABLE = tomllib.loads((Path(__file__).parents[1] / "access" / "access_table.toml").read_text())
PUBLIC_ROUTES = {e["route"] for e in _TABLE["node"]["route"] if e["allow"] == ["*"]}
# What each resource type of B's record is searched by, and a body naming B for writes.
SEARCH_BY = {"Patient": "_id", "Observation": "patient", "CarePlan": "subject"}


def _fill(template: str, fixed: dict[str, str], default: str) -> str:
    """A route template with its path parameters filled (unknown ones with ``default``)."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: fixed.get(m.group(1), default), template)


def _body_for_b(rtype: str, b: str, rid: str | None) -> dict[str, Any]:
    if rtype == "Patient":
        return {"resourceType": "Patient", "id": rid, "name": [{"family": "Changed"}]}
    body: dict[str, Any] = {"resourceType": rtype, "subject": {"reference": f"Patient/{b}"}}
    if rtype == "Observation":
        body.update(status="final", code={"coding": [{"system": "http://loinc.org",
                    "code": "29463-7"}]}, valueQuantity={"value": 80, "unit": "kg",
                    "system": "http://unitsofmeasure.org", "code": "kg"},
                    effectiveDateTime="2026-01-01T08:00:00Z")  # fmt: skip
    else:
        body.update(status="active", intent="plan")
    return body if rid is None else {**body, "id": rid}


def test_a_token_for_patient_a_is_refused_on_every_route_for_patient_b(region: Region) -> None:
    """Every route of the node's own route table (so a route added later is covered), aimed at
    patient B's data with patient A's token: 403 or 404 (session pages: a redirect to their
    sign-in, a bearer token opens no page), nothing of B's in the answer, nothing of B's
    changed."""
    from access.test_route_access import app_routes

    b = region.b.patient_id
    obs = region.store.create(_body_for_b("Observation", b, None), writer="test")
    targets = {
        "Patient": b,
        "Observation": obs.resource["id"],
        "CarePlan": _plan(region, b)["id"],
    }
    before = {t: region.store.read(t, i) for t, i in targets.items()}
    secret = "Bravo"  # B's family name: must not appear in any answer
    routes = sorted(app_routes(region.app) - PUBLIC_ROUTES)
    assert "GET /fhir/{rtype}/{rid}" in routes and len(routes) > 20
    driven, wrong = 0, []
    for route in routes:
        method, template = route.split(" ", 1)
        for rtype, rid in targets.items() if "{rtype}" in template else [("Patient", b)]:
            path = _fill(template, {"rtype": rtype, "vid": "1", "action": "accept"}, rid)
            params = {SEARCH_BY[rtype]: rid if rtype == "Patient" else f"Patient/{b}"}
            if template == "/fhir/{rtype}" and method == "GET":
                r = region.node.get(
                    path, params=params, headers=region.a.headers, follow_redirects=False
                )
            elif route == "POST /fhir":  # a transaction writing to and reading B's record
                entry = [{"resource": _body_for_b("Observation", b, None),
                          "request": {"method": "POST", "url": "Observation"}},
                         {"request": {"method": "GET", "url": f"Patient/{b}"}}]  # fmt: skip
                bundle = {"resourceType": "Bundle", "type": "batch", "entry": entry}
                r = region.node.post(
                    path, json=bundle, headers=region.a.headers, follow_redirects=False
                )
            elif "{rtype}" in template:
                r = region.node.request(
                    method, path, json=_body_for_b(rtype, b, rid),
                    headers={**region.a.headers, "Accept": "application/fhir+json"},
                    follow_redirects=False,
                )  # fmt: skip
            else:  # any other route: a reading about B, and B named in the query
                r = region.node.request(
                    method, path, params={"patient": b}, json=_body_for_b("Observation", b, None),
                    headers={**region.a.headers, "Accept": "application/fhir+json"},
                    follow_redirects=False,
                )  # fmt: skip
            driven += 1
            to_sign_in = r.is_redirect and "sign-in" in r.headers.get("location", "")
            # a POST search takes a form: the JSON body sent here is refused as such (415)
            form_only = route == "POST /fhir/{rtype}/_search" and r.status_code == 415
            if (r.status_code not in (403, 404) and not to_sign_in and not form_only) or (
                secret in r.text
            ):
                wrong.append((route, path, r.status_code, r.text[:160]))
    assert not wrong, wrong
    assert driven >= len(routes)
    assert {t: region.store.read(t, i) for t, i in targets.items()} == before
