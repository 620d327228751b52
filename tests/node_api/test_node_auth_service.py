"""Node accounts, scope grants and token grants, on both databases (no HTTP)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.auth.accounts import AccountError, AccountStore, migrate_accounts
from node.auth.grants import ScopeRefused, grant_scopes
from node.auth.roles import ROLE_SCOPES
from node.auth.service import CLIENT_ASSERTION_TYPE, AuthService, LoginFailure
from node.settings import load_settings
from servicekit.outcome import BadRequest, Forbidden, Unauthorized
from servicekit.storage import make_engine
from trust.tokens import SigningKey

TOKEN_URL = "http://node.test/auth/token"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def auth(db_url: str, tmp_path: Path) -> AuthService:
    settings = load_settings(tmp_path / "node", org_id="org-a", db_url=db_url)
    engine = make_engine(db_url)
    migrate_accounts(engine)
    migrate_accounts(engine)  # idempotent
    service = AuthService(settings, AccountStore(engine, FAST), SigningKey.generate())
    yield service
    engine.dispose()


def _client_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def _assertion(key: ec.EllipticCurvePrivateKey, client_id: str, **overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


def test_password_grant_gives_role_scopes_and_patient_context(auth: AuthService) -> None:
    auth.accounts.add_user("dr-a", "correct horse", "doctor")
    auth.accounts.add_user("pat-1", "correct horse", "patient", patient_id="p1")
    grant = auth.password_grant("dr-a", "correct horse", None)
    principal = auth.principal(grant.access_token)
    assert principal.role == "doctor" and principal.subject == "dr-a"
    assert grant.scope == " ".join(ROLE_SCOPES["doctor"])
    assert principal.compartment_for("Observation", "create") is None
    patient = auth.principal(auth.password_grant("pat-1", "correct horse", None).access_token)
    assert patient.patient_id == "p1"
    assert patient.compartment_for("Observation", "read") == "p1"
    assert patient.compartment_for("Observation", "create") == "p1"  # home readings (issue 15)
    for rtype, interaction in (("Condition", "create"), ("Observation", "delete")):
        with pytest.raises(Forbidden):
            patient.compartment_for(rtype, interaction)


def test_password_stored_as_argon2_hash(auth: AuthService) -> None:
    auth.accounts.add_user("nurse1", "s3cret-pass", "nurse")
    with auth.accounts.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT password_hash FROM node_accounts WHERE username = 'nurse1'"
        ).scalar_one()
    assert stored.startswith("$argon2id$") and "s3cret-pass" not in stored


def test_wrong_password_counts_failure_without_revealing_user(auth: AuthService) -> None:
    failures: list[LoginFailure] = []
    auth.failure_sinks.append(failures.append)
    auth.accounts.add_user("dr-a", "correct horse", "doctor")
    with pytest.raises(Unauthorized) as wrong:
        auth.password_grant("dr-a", "wrong password", None)
    with pytest.raises(Unauthorized) as unknown:
        auth.password_grant("nobody", "wrong password", None)
    assert wrong.value.diagnostics == unknown.value.diagnostics
    assert [f.reason for f in failures] == ["bad_credentials", "bad_credentials"]
    assert failures[0].known_subject == "dr-a" and failures[1].known_subject is None


def test_inactive_account_refused(auth: AuthService) -> None:
    auth.accounts.add_user("dr-a", "correct horse", "doctor")
    auth.accounts.set_active("dr-a", False)
    with pytest.raises(Unauthorized):
        auth.password_grant("dr-a", "correct horse", None)


@pytest.mark.parametrize(
    ("username", "role", "patient", "password", "problem"),
    [
        ("x", "surgeon", None, "long enough", "unknown role"),
        ("x", "patient", None, "long enough", "linked to a Patient"),
        ("x", "doctor", "p1", "long enough", "only patient accounts"),
        ("x", "doctor", None, "short", "at least"),
        ("bad name", "doctor", None, "long enough", "username"),
    ],
)
def test_bad_accounts_refused(
    auth: AuthService, username: str, role: str, patient: str | None, password: str, problem: str
) -> None:
    with pytest.raises(AccountError, match=problem):
        auth.accounts.add_user(username, password, role, patient_id=patient)


def test_duplicate_user_refused(auth: AuthService) -> None:
    auth.accounts.add_user("dr-a", "correct horse", "doctor")
    with pytest.raises(AccountError, match="already exists"):
        auth.accounts.add_user("dr-a", "other horse", "nurse")


def test_requested_scopes_are_narrowed_to_role() -> None:
    assert grant_scopes(["user/*.cruds"], "user/Observation.rs") == ["user/Observation.rs"]
    assert grant_scopes(["user/*.rs"], "user/Observation.rs user/Patient.c") == [
        "user/Observation.rs"
    ]
    with pytest.raises(ScopeRefused):
        grant_scopes(["user/*.rs"], "user/Patient.c")
    with pytest.raises(ScopeRefused):
        grant_scopes(["system/Observation.rs"], "system/*.rs", strict=True)
    assert grant_scopes(["patient/*.rs"], None) == ["patient/*.rs"]


def test_client_credentials_grant(auth: AuthService) -> None:
    key, pem = _client_key()
    auth.accounts.add_client("supernode-a", pem, "system/*.rs")
    grant = auth.client_credentials_grant(
        CLIENT_ASSERTION_TYPE, _assertion(key, "supernode-a"), "system/Observation.rs", [TOKEN_URL]
    )
    assert grant.expires_in <= 300 and grant.scope == "system/Observation.rs"
    principal = auth.principal(grant.access_token)
    assert principal.role == "system" and principal.subject == "supernode-a"
    assert principal.compartment_for("Observation", "search") is None
    with pytest.raises(Forbidden):
        principal.compartment_for("Patient", "read")


def test_client_assertion_replay_and_forgeries_refused(auth: AuthService) -> None:
    key, pem = _client_key()
    other, _ = _client_key()
    auth.accounts.add_client("supernode-a", pem, "system/*.rs")
    failures: list[LoginFailure] = []
    auth.failure_sinks.append(failures.append)
    good = _assertion(key, "supernode-a")
    auth.client_credentials_grant(CLIENT_ASSERTION_TYPE, good, None, [TOKEN_URL])
    cases = {
        "replayed": good,
        "wrong key": _assertion(other, "supernode-a"),
        "wrong audience": _assertion(key, "supernode-a", aud="http://elsewhere/auth/token"),
        "sub differs": _assertion(key, "supernode-a", sub="someone-else"),
        "expired": _assertion(
            key, "supernode-a", iat=int(time.time()) - 400, exp=int(time.time()) - 100
        ),
        "too long-lived": _assertion(key, "supernode-a", exp=int(time.time()) + 3000),
        "unknown client": _assertion(key, "not-registered"),
    }
    for what, assertion in cases.items():
        with pytest.raises(Unauthorized):
            auth.client_credentials_grant(CLIENT_ASSERTION_TYPE, assertion, None, [TOKEN_URL])
            pytest.fail(f"{what} was accepted")
    assert len(failures) == len(cases)
    assert failures[0].reason == "replayed"
    with pytest.raises(BadRequest, match="invalid_scope"):
        auth.client_credentials_grant(
            CLIENT_ASSERTION_TYPE, _assertion(key, "supernode-a"), "system/*.cruds", [TOKEN_URL]
        )
    with pytest.raises(BadRequest):
        auth.client_credentials_grant("password", _assertion(key, "supernode-a"), None, [TOKEN_URL])


def test_backend_client_needs_system_scopes_and_ec_key(auth: AuthService) -> None:
    _key, pem = _client_key()
    with pytest.raises(AccountError, match="system"):
        auth.accounts.add_client("c1", pem, "user/*.rs")
    with pytest.raises(AccountError, match="PEM"):
        auth.accounts.add_client("c1", "not a key", "system/*.rs")


def _node_token(auth: AuthService, key: SigningKey | None = None, **overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": auth.settings.token_issuer,
        "aud": auth.settings.token_audience,
        "sub": "dr-a",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "user/*.cruds",
        "role": "doctor",
    }
    claims.update(overrides)
    key = key or auth.key
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers={"kid": auth.key.kid})


def test_expired_tampered_and_foreign_tokens_refused(auth: AuthService) -> None:
    assert auth.principal(_node_token(auth)).role == "doctor"  # the crafted token is valid
    good = _node_token(auth)
    head, body, sig = good.split(".")
    elevated = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b'"doctor"', b'"admin"')
    ).decode()
    bad_tokens = {
        "expired": _node_token(auth, iat=int(time.time()) - 900, exp=int(time.time()) - 60),
        "tampered": ".".join([head, elevated, sig]),
        "wrong audience": _node_token(auth, aud="urn:ipjms:node:org-b:fhir"),
        "wrong issuer": _node_token(auth, iss="urn:ipjms:node:org-b"),
        "foreign key": _node_token(auth, key=SigningKey.generate()),
        "garbage": "not-a-jwt",
    }
    for what, token in bad_tokens.items():
        with pytest.raises(Unauthorized):
            auth.principal(token)
            pytest.fail(f"{what} token accepted")
