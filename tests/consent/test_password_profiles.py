"""The registry's argon2id profile is a setting (trust/password_hashing.py): a named profile
with its source, self-describing hashes, re-hashing on the next login after a change."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import VerifyMismatchError
from consent_harness import BASE, Pki
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from consent.app import create_app
from consent.client import ConsentClient
from consent.schema import patients
from consent.settings import RegistrySettings
from trust.password_hashing import PROFILES, password_hasher, unknown_user_hash

PASSWORD = "correct horse battery"


def _settings(tmp_path: Path, pki: Pki, profile: str) -> RegistrySettings:
    return RegistrySettings(
        data_dir=tmp_path / "consent",
        ca_dir=pki.ca_dir,
        public_url=BASE,
        password_hash=profile,  # type: ignore[arg-type]
    )


def _stored_hash(app: object) -> str:
    with app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return str(conn.execute(select(patients.c.password_hash)).scalar_one())


def test_a_profile_change_keeps_logins_and_rehashes_on_the_next_one(
    tmp_path: Path, pki: Pki
) -> None:
    strong = _settings(tmp_path, pki, "rfc9106-low-memory")
    app = create_app(strong)
    with TestClient(app) as http:
        client = ConsentClient(BASE, pki.orgs["hosp-a"], transport=http._transport)
        code = client.create_enrolment_code("p-profile-0001")["code"]
        r = http.post("/enrol", json={"code": code, "password": PASSWORD})
        assert r.status_code == 201, r.text
        username = r.json()["username"]
        before = extract_parameters(_stored_hash(app))
    app.state.engine.dispose()
    rfc = PROFILES["rfc9106-low-memory"]
    assert (before.time_cost, before.memory_cost, before.parallelism) == (
        rfc.time_cost,
        rfc.memory_kib,
        rfc.parallelism,
    )

    app = create_app(_settings(tmp_path, pki, "owasp-minimum"))
    with TestClient(app) as http:
        wrong = http.post("/auth/patient-token", data={"username": username, "password": "x" * 12})
        assert wrong.status_code == 401
        assert extract_parameters(_stored_hash(app)) == before  # a failed login changes nothing
        ok = http.post("/auth/patient-token", data={"username": username, "password": PASSWORD})
        assert ok.status_code == 200, ok.text
        after = extract_parameters(_stored_hash(app))
        again = http.post("/auth/patient-token", data={"username": username, "password": PASSWORD})
        assert again.status_code == 200, again.text  # the re-hashed password still verifies
    app.state.engine.dispose()
    owasp = PROFILES["owasp-minimum"]
    assert (after.time_cost, after.memory_cost, after.parallelism) == (
        owasp.time_cost,
        owasp.memory_kib,
        owasp.parallelism,
    )


def test_an_unknown_profile_is_refused_by_name(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValidationError, match="password_hash"):
        _settings(tmp_path, pki, "md5")


def test_every_profile_names_its_source() -> None:
    for name, profile in PROFILES.items():
        assert profile.source and str(profile.time_cost) in profile.source, name


@pytest.mark.parametrize(
    "hasher",
    [
        *(password_hasher(name) for name in PROFILES),
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8),
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I),
    ],
)
def test_the_unknown_user_hash_costs_what_a_real_one_does_and_verifies_nothing(
    hasher: PasswordHasher,
) -> None:
    """Verifying against the unknown-user hash recomputes argon2 with the parameters it
    carries: the hasher's own, as a real hash of that hasher carries them. No password
    verifies against it, and it is not one to re-hash."""
    dummy = unknown_user_hash(hasher)
    assert extract_parameters(dummy) == extract_parameters(hasher.hash(PASSWORD))
    for password in (PASSWORD, "", "not-a-real-password"):
        with pytest.raises(VerifyMismatchError):
            hasher.verify(dummy, password)
    assert not hasher.check_needs_rehash(dummy)
    assert unknown_user_hash(hasher) != dummy  # a fresh salt each time
