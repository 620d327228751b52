"""Test harness for the node API: a node app behind TestClient, one account per role."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from node.app import create_app
from node.settings import load_settings

PASSWORD = "correct horse battery"
FHIR = "application/fhir+json"
# Cheap hashing for test accounts (production uses argon2-cffi's defaults).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass
class Node:
    client: TestClient
    app: Any

    @property
    def store(self) -> Any:
        return self.app.state.store

    def login(self, username: str, scope: str | None = None) -> dict[str, str]:
        form = {"grant_type": "password", "username": username, "password": PASSWORD}
        if scope:
            form["scope"] = scope
        r = self.client.post("/auth/token", data=form)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def post(self, path: str, body: Any, headers: dict[str, str], **kw: Any) -> Any:
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.client.post(
            path, content=raw, headers={"Content-Type": FHIR, **headers, **kw.pop("extra", {})}
        )

    def put(self, path: str, body: Any, headers: dict[str, str]) -> Any:
        return self.client.put(
            path, content=json.dumps(body), headers={"Content-Type": FHIR, **headers}
        )


def make_node(db_url: str, data_dir: Path, **settings: Any) -> Iterator[Node]:
    app = create_app(load_settings(data_dir, org_id="org-test", db_url=db_url, **settings))
    app.state.auth.accounts.hasher = FAST_HASHER
    accounts = app.state.auth.accounts
    accounts.add_user("doctor1", PASSWORD, "doctor")
    accounts.add_user("nurse1", PASSWORD, "nurse")
    accounts.add_user("admin1", PASSWORD, "admin")
    with TestClient(app) as client:
        yield Node(client, app)


def outcome_text(response: Any) -> str:
    """The diagnostics of an OperationOutcome response (asserting it is one)."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i.get("diagnostics", "") for i in body["issue"])
