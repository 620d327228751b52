"""trust.tokens and trust.scopes: the token rules every service relies on."""

from __future__ import annotations

import time

import jwt
import pytest

from trust.scopes import allows, parse_scopes
from trust.tokens import ReplayCache, SigningKey, TokenError, TokenIssuer, TokenVerifier


def _pair(alg: str = "ES256") -> tuple[TokenIssuer, TokenVerifier]:
    key = SigningKey.generate(alg)
    issuer = TokenIssuer("https://node-a", key)
    verifier = TokenVerifier("https://node-a", "node-a-api", {key.kid: key.public_key})
    return issuer, verifier


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
def test_round_trip_carries_claims(alg: str) -> None:
    issuer, verifier = _pair(alg)
    token = issuer.issue("user-1", "node-a-api", scopes=["user/*.rs"], claims={"role": "doctor"})
    claims = verifier.verify(token)
    assert claims["sub"] == "user-1" and claims["role"] == "doctor"
    assert claims["scope"] == "user/*.rs"


def test_forged_signature_refused() -> None:
    issuer, verifier = _pair()
    token = issuer.issue("u", "node-a-api")
    head, body, sig = token.split(".")
    forged = ".".join([head, body, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")])
    with pytest.raises(TokenError):
        verifier.verify(forged)


def test_alg_none_refused() -> None:
    _issuer, verifier = _pair()
    payload = {"iss": "https://node-a", "aud": "node-a-api", "sub": "u", "jti": "x"}
    payload |= {"iat": int(time.time()), "exp": int(time.time()) + 60}
    token = jwt.encode(payload, key=None, algorithm="none")
    with pytest.raises(TokenError, match="algorithm"):
        verifier.verify(token)


def test_key_of_another_issuer_refused() -> None:
    issuer, _ = _pair()
    _other_issuer, verifier = _pair()
    with pytest.raises(TokenError, match="unknown key"):
        verifier.verify(issuer.issue("u", "node-a-api"))


def test_wrong_audience_issuer_and_expiry_refused() -> None:
    issuer, verifier = _pair()
    with pytest.raises(TokenError, match="audience"):
        verifier.verify(issuer.issue("u", "other-api"))
    wrong_iss = TokenIssuer("https://evil", issuer.key)
    with pytest.raises(TokenError, match="issuer"):
        verifier.verify(wrong_iss.issue("u", "node-a-api"))
    expired = issuer.issue("u", "node-a-api", ttl=1, claims={"iat": 0, "exp": 10, "nbf": 0})
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(expired)


def test_replayed_jti_refused() -> None:
    issuer, verifier = _pair()
    verifier.replay_cache = ReplayCache()
    token = issuer.issue("u", "node-a-api")
    verifier.verify(token)
    with pytest.raises(TokenError, match="replayed"):
        verifier.verify(token)


def test_scopes_v1_and_v2() -> None:
    scopes = parse_scopes("openid patient/Observation.rs user/*.read system/Patient.cruds")
    assert allows(scopes, "Observation", "read") == {"patient", "user"}
    assert allows(scopes, "Observation", "create") == set()
    assert allows(scopes, "Patient", "delete") == {"system"}
    assert allows(scopes, "Condition", "search") == {"user"}


def test_pseudonym_is_stable_normalised_and_keyed() -> None:
    from node.identity import NATIONAL_ID_SYSTEM, patient_pseudonym
    from trust.pseudonym import pseudonym
    from trust.pseudonymiser import LinkageKeyPseudonymiser

    key, other = b"k" * 32, b"o" * 32
    assert pseudonym(key, " 123-45 6789 ") == pseudonym(key, "123456789")
    assert pseudonym(key, "123456789") != pseudonym(other, "123456789")
    patient = {"identifier": [{"system": NATIONAL_ID_SYSTEM, "value": "123456789"}]}
    legacy = LinkageKeyPseudonymiser(key)  # the pre-OPRF scheme: the value alone
    assert patient_pseudonym(patient, legacy) == pseudonym(key, "123456789")
    assert patient_pseudonym({"identifier": []}, legacy) is None
