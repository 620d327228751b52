"""What consent/README.md promises and no other test checked: a patient narrowing and revoking
a consent with ``PUT /fhir/Consent/{id}`` and ``If-Match``; refused requests listed only with
``include_refused=true``; break-glass over an explicit deny; the decision token's ``exp``,
``aud`` and ``typ``, and a key of another registry; the client's token cache and its single
re-login on 401. (In-process registry on SQLite and PostgreSQL.)"""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest
from consent_harness import BASE, Registry, treat_consent

from consent.client import ConsentClient, ConsentRegistryError
from consent.decision_token import (
    DECISION_AUDIENCE,
    DECISION_TYP,
    DecisionTokenError,
    jwks_of,
    sign_decision,
    verify_decision_token,
)
from trust.tokens import SigningKey, jwk_thumbprint, key_thumbprint

P1, P2 = "c3" * 32, "d4" * 32


def _decides(registry: Registry, classes: list[str], recipient: str = "clinic-b") -> set[str]:
    d = registry.org("hosp-a").decide(P1, recipient, "TREAT", classes)
    return set(d.classes) if d.permit else set()


def test_patient_narrows_then_revokes_with_put_and_if_match(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    consent = registry.grant(headers, treat_consent(P1, classes=("Condition", "Observation")))
    url = f"/fhir/Consent/{consent['id']}"
    assert _decides(registry, ["Condition", "Observation"]) == {"Condition", "Observation"}
    version = consent["meta"]["versionId"]

    # narrow to Condition only, at the version the patient read
    narrowed = treat_consent(P1, classes=("Condition",))
    narrowed["id"] = consent["id"]
    r = registry.http.put(url, json=narrowed, headers={**headers, "If-Match": f'W/"{version}"'})
    assert r.status_code == 200, r.text
    new_version = r.json()["meta"]["versionId"]
    assert new_version != version and r.headers["ETag"] == f'W/"{new_version}"'
    assert _decides(registry, ["Condition", "Observation"]) == {"Condition"}

    # a stale If-Match (the version before the narrowing) is refused and changes nothing
    stale = dict(narrowed, status="inactive")
    r = registry.http.put(url, json=stale, headers={**headers, "If-Match": f'W/"{version}"'})
    assert r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome"
    assert registry.http.get(url, headers=headers).json()["status"] == "active"
    assert _decides(registry, ["Condition"]) == {"Condition"}

    # status → inactive at the current version: revoked, the very next decision denies
    r = registry.http.put(url, json=stale, headers={**headers, "If-Match": f'W/"{new_version}"'})
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    assert _decides(registry, ["Condition"]) == set()


def test_refused_requests_are_listed_only_with_include_refused(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    registry.grant(headers, treat_consent(P1, classes=("Condition",)))
    hosp = registry.org("hosp-a")
    assert hosp.decide(P1, "clinic-b", "TREAT", ["Condition"]).permit
    assert not hosp.decide(P1, "clinic-c", "TREAT", ["Condition"]).permit  # refused

    def listed(query: str) -> list[dict]:
        r = registry.http.get(f"/patients/me/disclosures{query}", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["disclosures"]  # type: ignore[no-any-return]

    default = listed("")
    assert [(i["kind"], i["recipient"]) for i in default] == [("authorised", "clinic-b")]
    full = listed("?include_refused=true")
    assert sorted((i["kind"], i["recipient"]) for i in full) == [
        ("authorised", "clinic-b"),
        ("refused", "clinic-c"),
    ]
    assert listed("?include_refused=false") == default


def test_break_glass_overrides_an_explicit_deny(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    # the patient permits Condition to hosp-a but explicitly denies AllergyIntolerance
    registry.grant(
        headers,
        treat_consent(
            P1, recipient="hosp-a", classes=("Condition",), denies=("AllergyIntolerance",)
        ),
    )
    hosp = registry.org("hosp-a")
    ordinary = hosp.decide(P1, "hosp-a", "TREAT", ["AllergyIntolerance"])
    assert not ordinary.permit  # the deny holds for ordinary care
    d = hosp.decide(
        P1,
        "hosp-a",
        "ETREAT",
        ["AllergyIntolerance"],
        reason="anaphylaxis in ED, history unknown",
        acting_role="doctor",
        acting_user="u-42",
    )
    assert d.permit and d.break_glass and d.classes == {"AllergyIntolerance"}
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    glass = [
        e.event for e in ledger.entries(patient_pseudonym=P1) if "anaphylaxis in ED" in str(e.event)
    ]
    assert len(glass) == 1  # the override is audited with its reason
    seen = registry.http.get("/patients/me/disclosures", headers=headers).json()["disclosures"]
    assert [i["kind"] for i in seen if i["break_glass"]] == ["break-glass"]


# --- the decision token ---------------------------------------------------------------------


def _claims(patient: str = P1) -> dict[str, object]:
    return {"sub": patient, "permit": True, "classes": ["Condition"], "requester": "hosp-a"}


def _key() -> SigningKey:
    """A decision key under its RFC 7638 thumbprint id (what verifiers require)."""
    key = SigningKey.generate()
    return SigningKey(key_thumbprint(key.public_key), key.private_key, key.algorithm)


def _token(key: SigningKey, payload: dict[str, object], **header: object) -> str:
    headers = {"kid": key.kid, "typ": DECISION_TYP, **header}
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers=headers)


def test_decision_token_exp_aud_and_typ_are_enforced() -> None:
    key = _key()
    jwks = jwks_of(key)
    good, _ = sign_decision(key, "urn:registry", _claims(), ttl=60)
    assert verify_decision_token(good, jwks).permit
    expired, _ = sign_decision(key, "urn:registry", _claims(), ttl=-60)  # beyond the 5 s leeway
    with pytest.raises(DecisionTokenError, match="expired"):
        verify_decision_token(expired, jwks)
    now = int(time.time())
    base = {**_claims(), "iss": "urn:registry", "iat": now, "exp": now + 60, "jti": "j1"}
    other_aud = _token(key, {**base, "aud": "urn:ipjms:node:hosp-a:fhir"})
    with pytest.raises(DecisionTokenError, match="refused"):
        verify_decision_token(other_aud, jwks)
    no_aud = _token(key, base)
    with pytest.raises(DecisionTokenError, match="refused"):
        verify_decision_token(no_aud, jwks)
    # an access token of the same key (typ JWT) is not a decision, even with the right aud
    as_access = _token(key, {**base, "aud": DECISION_AUDIENCE}, typ="JWT")
    with pytest.raises(DecisionTokenError, match="not a consent decision token"):
        verify_decision_token(as_access, jwks)
    assert verify_decision_token(_token(key, {**base, "aud": DECISION_AUDIENCE}), jwks).permit


def test_a_key_of_another_registry_is_not_trusted(registry: Registry) -> None:
    """Key ids are RFC 7638 thumbprints, so another registry's key cannot pose under ours: a
    JWKS listing a key under someone else's id is refused, and a token another key signed
    under our id fails the signature."""
    headers = registry.patient_headers(P1)
    registry.grant(headers, treat_consent(P1))
    d = registry.org("hosp-a").decide(P1, "clinic-b", "TREAT", ["Condition"])
    ours = registry.http.get("/.well-known/jwks.json").json()
    kid = ours["keys"][0]["kid"]
    assert kid == jwk_thumbprint(ours["keys"][0])
    other_registry = jwks_of(SigningKey(kid, SigningKey.generate().private_key))
    assert other_registry["keys"][0]["kid"] == kid and other_registry != ours
    with pytest.raises(DecisionTokenError, match="thumbprint"):
        verify_decision_token(d.token, other_registry)
    # and a token the other registry signed is refused by our JWKS
    forged, _ = sign_decision(
        SigningKey(kid, SigningKey.generate().private_key), "urn:other", _claims(), ttl=60
    )
    with pytest.raises(DecisionTokenError, match="signature"):
        verify_decision_token(forged, ours)


# --- the consent client ---------------------------------------------------------------------


class _Recording(httpx.BaseTransport):
    """The registry's own transport, recording each request's path; ``refuse_bearer`` drops
    the Authorization header of API calls (a registry that no longer accepts the client's
    tokens)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.paths, self.refuse_bearer = inner, [], False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.refuse_bearer and request.url.path != "/auth/token":
            del request.headers["Authorization"]
        return self.inner.handle_request(request)

    def logins(self) -> int:
        return self.paths.count("/auth/token")


def test_client_caches_tokens_per_role_and_logs_in_again_once_on_401(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    registry.grant(headers, treat_consent(P1))
    transport = _Recording(registry.http._transport)
    client = ConsentClient(BASE, registry.pki.orgs["hosp-a"], transport=transport)
    for _ in range(3):
        assert client.decide(P1, "clinic-b", "TREAT", ["Condition"]).permit
    assert transport.logins() == 1  # one token for three decisions
    client.decide(
        P1, "hosp-a", "ETREAT", ["Condition"], reason="ED", acting_role="doctor", acting_user="u-42"
    )
    client.decide(
        P1, "hosp-a", "ETREAT", ["Condition"], reason="ED", acting_role="doctor", acting_user="u-42"
    )
    assert transport.logins() == 2  # one more for the acting role, then cached too

    # the registry no longer accepts the cached token (e.g. restarted with a new key): one
    # re-login, and the request goes through
    client._tokens[(None, None)] = (f"stale-{uuid.uuid4().hex}", time.monotonic() + 600)
    assert client.decide(P1, "clinic-b", "TREAT", ["Condition"]).permit
    assert transport.logins() == 3

    # a registry that refuses every token: exactly one re-login, then a clear 401 (no loop)
    transport.refuse_bearer = True
    before = len(transport.paths)
    with pytest.raises(ConsentRegistryError) as err:
        client.decide(P1, "clinic-b", "TREAT", ["Condition"])
    assert err.value.status == 401
    assert transport.paths[before:] == [
        "/fhir/Consent/$decide",
        "/auth/token",
        "/fhir/Consent/$decide",
    ]
