"""Liveness does not ask the database (issue 22): with the node's PostgreSQL refusing every
connection, ``/healthz`` (readiness) answers 503 — the pod leaves its Service — while ``/livez``
(the liveness probe) still answers, so a database outage never restarts the node; once the
database is back, the node is ready again without a restart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from deploy.launcher import ipjms_command, start_service, wait_until

PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")


def _admin(sql: str, *params: str) -> None:
    import psycopg

    assert PG_URL
    with psycopg.connect(
        PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute(sql, params)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_a_database_outage_fails_readiness_not_liveness(tmp_path: Path, pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    data = tmp_path / "node"
    done = subprocess.run(
        ipjms_command("node", "init", "--org", "org-live", "--name", "Liveness", "--level",
                      "community", "--data-dir", str(data), "--db", pg_url),
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "IPJMS_ADMIN_PASSWORD": "liveness test admin pw"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    node = start_service(
        "node-live",
        ["node", "serve", "--data-dir", str(data), "--port", "0"],
        base_url="http://127.0.0.1:{http}",
        log_dir=tmp_path / "logs",
        ports_dir=data,
    )
    try:
        assert httpx.get(f"{node.base_url}/healthz", timeout=10).status_code == 200
        # the outage: no new connection admitted, every open one cut
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)
        ready = httpx.get(f"{node.base_url}/healthz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["issue"][0]["code"] == "transient"
        for _ in range(3):
            assert httpx.get(f"{node.base_url}/livez", timeout=10).status_code == 204
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        wait_until(
            lambda: httpx.get(f"{node.base_url}/healthz", timeout=10).status_code == 200,
            30,
            what="readiness after the database is back",
        )
        assert node.alive()
    finally:
        node.stop()
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
