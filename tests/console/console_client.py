"""The real console app (``install_console`` on a FastAPI app) in a TestClient, with an analyst
signed in through the sign-in form (CSRF token and all)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from coordinator.console.analysts import AnalystAccounts
from coordinator.console.pages import install_console
from servicekit.outcome import install_error_handlers

PASSWORD = "analyst password 42"


def _client(tmp_path: Path, federated_dir: Path | None, **settings: Any) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    data = tmp_path / "coordinator"
    install_console(app, data, federated_dir=federated_dir, **settings)
    AnalystAccounts(data).add("analyst", PASSWORD)
    client = TestClient(app, base_url="http://testserver")
    page = client.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "the sign-in form carries the CSRF token"
    r = client.post(
        "/console/sign-in",
        data={"username": "analyst", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/network"
    return client


def _csrf(client: TestClient, path: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert token
    return token.group(1)
