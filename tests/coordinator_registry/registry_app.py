"""The model registry tests' helpers: the organisations of the test region and a client of
the coordinator's HTTP app that signs each request with an organisation assertion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from coordinator.model_registry.store import models
from trust.backend_auth import make_org_assertion
from trust.pki import OrgCredentials

BASE = "http://testserver"
# organisation → level in the coordinator's directory (None: issued by the CA, not registered)
ORGS: dict[str, str | None] = {
    "coordinator": None,
    "org-authority": "authority",
    "org-tertiary": "tertiary",
    "org-clinic": "community",
    "org-revoked": "community",  # registered, then revoked in the directory
    "org-unregistered": None,
}


@dataclass
class Pki:
    ca_dir: Path
    org_dirs: dict[str, Path]
    creds: dict[str, OrgCredentials]
    foreign: OrgCredentials  # same org id as the authority, issued by another CA


@dataclass
class Registry:
    client: TestClient
    engine: Engine
    pki: Pki

    def headers(self, org: str | OrgCredentials, path: str) -> dict[str, str]:
        creds = self.pki.creds[org] if isinstance(org, str) else org
        return {"Authorization": f"Bearer {make_org_assertion(creds, BASE + path)}"}

    def get(self, org: str | OrgCredentials, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params or None, headers=self.headers(org, path))

    def post(self, org: str | OrgCredentials, path: str, body: Any) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers(org, path))

    def stored(self) -> int:
        """Rows in the registry's table (what a refused upload must leave unchanged)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(models)).scalar_one())
