"""Failed password sign-ins at a node are throttled and locked out per account (issue 15), on
every path that checks a password: the token endpoint's password grant (OAuth2 error JSON, 429 and
Retry-After), the SMART authorize page and the doctors' web pages (which sign in there) — all
through ``AccountStore.authenticate``. Both databases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from deploy.demo.staff_sign_in import login_form
from node.auth.service import LoginFailure
from tests.node_api.node_harness import PASSWORD, Node, make_node
from trust.login_throttle import AccountLocked


@pytest.fixture
def node(db_url: str, tmp_path: Path) -> Iterator[Node]:
    yield from make_node(db_url, tmp_path / "node")


def _token(node: Node, username: str, password: str) -> object:
    form = {"grant_type": "password", "username": username, "password": password}
    return node.client.post("/auth/token", data=form)


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(node: Node) -> None:
    failures: list[LoginFailure] = []
    node.app.state.auth.failure_sinks.append(failures.append)
    for _ in range(5):
        r = _token(node, "doctor1", "wrong password")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    locked = _token(node, "doctor1", PASSWORD)  # the right password, but the account is locked
    assert locked.status_code == 429, locked.text
    body = locked.json()
    assert body["error"] == "invalid_grant"
    assert "too many failed logins" in body["error_description"]
    assert 1 <= int(locked.headers["Retry-After"]) <= 60
    assert locked.headers["Cache-Control"] == "no-store"
    assert [f.reason for f in failures] == ["bad_credentials"] * 5 + ["locked"]
    # other accounts are not affected
    assert _token(node, "nurse1", PASSWORD).status_code == 200


def test_unknown_user_names_are_throttled_alike(node: Node) -> None:
    for _ in range(5):
        assert _token(node, "nobody-here", "wrong password").status_code == 400
    assert _token(node, "nobody-here", "wrong password").status_code == 429
    # the table holds no user names
    with node.app.state.auth.accounts.engine.connect() as conn:
        keys = [r[0] for r in conn.exec_driver_sql("SELECT account_key FROM node_login_throttle")]
    assert keys and all(len(k) == 64 and "nobody" not in k for k in keys)


def test_a_locked_account_spends_no_hash_and_unlocks_after_its_time(node: Node) -> None:
    accounts = node.app.state.auth.accounts
    for _ in range(5):
        assert accounts.authenticate("doctor1", "wrong password") is None
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append("verify")
            return super().verify(hash, password)

    accounts.hasher = CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    with pytest.raises(AccountLocked) as locked:
        accounts.authenticate("doctor1", PASSWORD)
    assert calls == [] and locked.value.status == 429
    later = time.time() + 61  # past the first 60 s lock
    accounts.throttle.check("doctor1", now=later)  # no longer locked
    with accounts.engine.begin() as conn:  # move the lock into the past
        conn.exec_driver_sql("UPDATE node_login_throttle SET locked_until = 0")
    assert accounts.authenticate("doctor1", PASSWORD) is not None  # a success resets the count
    assert accounts.authenticate("doctor1", "wrong password") is None
    assert accounts.authenticate("doctor1", PASSWORD) is not None


def test_the_web_sign_in_page_is_throttled_too(node: Node) -> None:
    """The pages sign staff in through the node's own login page (authorization code + PKCE):
    a locked account is refused there (429) even with the right password, and no code, no
    session follows."""
    for _ in range(5):
        node.app.state.auth.accounts.authenticate("doctor1", "wrong password")
    pages = TestClient(node.app, base_url="http://127.0.0.1", follow_redirects=False)
    start = pages.get("/app/sign-in/node")
    if start.status_code == 404:
        pytest.skip("the doctors' pages are not served by this node configuration")
    login = pages.get(start.headers["location"])
    assert login.status_code == 200, login.text
    form = {**login_form(login.text), "username": "doctor1", "password": PASSWORD}
    r = pages.post("/auth/authorize", data=form)
    assert "location" not in r.headers
    assert pages.get("/app/panel").status_code == 303  # still signed out
    assert r.status_code == 429, r.status_code
