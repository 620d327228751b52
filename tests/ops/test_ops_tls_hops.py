"""Every hop refuses a plaintext client (issue 22, must-show 2), on real processes: the managed
PostgreSQL of ``ipjms up`` (TLS only, certificate from the regional CA), the consent registry and
the coordinator serving HTTPS with their organisations' certificates on it over ``verify-full``,
and the coordinator's gRPC; a node (the FHIR API a SuperNode reads patient data from) serving
HTTPS on its own database. The checks are deploy/demo/tls_check.py's, which also end
``ipjms up --run-story`` with ``[tls] enabled`` (tests/ops/test_ops_up.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from deploy.demo.tls_check import (
    plaintext_grpc_refused,
    plaintext_http_refused,
    plaintext_pg_refused,
)
from deploy.launcher import Service, free_port, start_service
from deploy.local_postgres import LocalPostgres, PostgresUnavailable, find_bin
from trust.pki import init_ca, issue_org


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    try:
        find_bin("initdb")
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("tls")
    ca = root / "ca"
    init_ca(ca)
    for org in ("org-consent", "org-coordinator", "org-db", "org-node"):
        issue_org(ca, org, host="127.0.0.1,localhost")
    orgs = ca / "orgs"
    pg = LocalPostgres.prepare(
        # PostgreSQL takes a fixed port (it cannot bind 0 and say which it got): free_port
        root / "postgres", ca_dir=ca, port=free_port(),
        server_cert=orgs / "org-db" / "tls.cert.pem", server_key=orgs / "org-db" / "tls.key.pem",
    )  # fmt: skip
    pg.start()
    old_env = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "IPJMS_DB_PASSWORD_FILE")}
    os.environ["SSL_CERT_FILE"] = str(ca / "ca.cert.pem")
    os.environ["IPJMS_DB_PASSWORD_FILE"] = str(pg.password_file)
    services: list[Service] = []
    try:
        password = pg.password_file.read_text().strip()
        with psycopg.connect(pg.url, password=password, autocommit=True) as conn:
            for name in ("consent", "coordinator", "node"):
                conn.execute(f"CREATE DATABASE {name}")
        db = {n: pg.url.replace("/postgres?", f"/{n}?") for n in ("consent", "coordinator", "node")}
        consent = start_service(
            "consent",
            ["consent", "serve", "--data-dir", str(root / "consent"), "--port", "0",
             "--db", db["consent"], "--ca-dir", str(ca),
             "--tls-cert", str(orgs / "org-consent" / "tls.cert.pem"),
             "--tls-key", str(orgs / "org-consent" / "tls.key.pem")],
            base_url="https://127.0.0.1:{http}", log_dir=root / "logs",
            ports_dir=root / "consent",
        )  # fmt: skip
        services.append(consent)
        coordinator = start_service(
            "coordinator",
            ["coordinator", "serve", "--data-dir", str(root / "coordinator"),
             "--port", "0", "--http-tls",
             "--db", db["coordinator"], "--ca-dir", str(ca),
             "--org-dir", str(orgs / "org-coordinator"), "--consent-url", consent.base_url],
            base_url="https://127.0.0.1:{http}", log_dir=root / "logs",
            ports_dir=root / "coordinator",
        )  # fmt: skip
        services.append(coordinator)
        # a node: the FHIR API its SuperNode reads patient data from, on its own database
        subprocess.run(
            [sys.executable, "-m", "deploy.cli", "node", "init", "--org", "org-node",
             "--name", "TLS Clinic", "--level", "community", "--data-dir", str(root / "node"),
             "--db", db["node"]],
            check=True, capture_output=True, timeout=300,
            env={**os.environ, "IPJMS_ADMIN_PASSWORD": "tls-hops-admin"},
        )  # fmt: skip
        node = start_service(
            "node",
            ["node", "serve", "--data-dir", str(root / "node"), "--port", "0",
             "--tls-cert", str(orgs / "org-node" / "tls.cert.pem"),
             "--tls-key", str(orgs / "org-node" / "tls.key.pem")],
            base_url="https://127.0.0.1:{http}", log_dir=root / "logs",
            ports_dir=root / "node",
        )  # fmt: skip
        services.append(node)
        yield {
            "node": node.base_url,
            "consent": consent.base_url,
            "coordinator": coordinator.base_url,
            "grpc": f"127.0.0.1:{coordinator.extra['ports']['grpc']}",
            "db": db,
            "password": password,
            "orgs": orgs,
        }
    finally:
        for service in reversed(services):
            service.stop()
        pg.stop()
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if os.geteuid() == 0:  # the data dir the postgres user owned
            tag = hashlib.sha256(str((root / "postgres").resolve()).encode()).hexdigest()[:12]
            shutil.rmtree(f"/var/tmp/ipjms-postgres-{tag}", ignore_errors=True)


@pytest.mark.parametrize("service", ["node", "consent", "coordinator"])
def test_http_services_answer_only_over_tls(region: dict[str, object], service: str) -> None:
    assert plaintext_http_refused(str(region[service]))


def test_coordinator_grpc_refuses_a_plaintext_channel(region: dict[str, object]) -> None:
    assert plaintext_grpc_refused(str(region["grpc"]))


@pytest.mark.parametrize("service", ["node", "consent", "coordinator"])
def test_postgresql_refuses_plaintext_and_the_services_use_verify_full(
    region: dict[str, object], service: str
) -> None:
    url = region["db"][service]
    assert "sslmode=verify-full" in url
    refusal = plaintext_pg_refused(url, str(region["password"]))
    assert refusal is not None and "no encryption" in refusal, refusal
    # the service's own connections are TLS (it serves: its schema was migrated over them)
    with psycopg.connect(url, password=str(region["password"])) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = %s AND a.pid <> pg_backend_pid()",
            (service,),
        ).fetchone()
    assert row is not None and row[1] >= 1 and row[0] == row[1], row


def test_consent_over_tls_admits_assertions_to_its_https_url(region: dict[str, object]) -> None:
    """Served over HTTPS with no --public-url (its port the OS's pick), the registry's token
    audience is its https:// URL: the one an organisation addresses its assertion to."""
    from consent.client import ConsentClient
    from trust.pki import load_org
    from trust.pseudonym import pseudonym

    org = load_org(region["orgs"] / "org-coordinator")  # type: ignore[operator]
    with ConsentClient(str(region["consent"]), org) as client:
        assert client.create_enrolment_code(pseudonym(b"k" * 32, "TLS-0001"))["code"]


def test_a_rotated_database_password_is_used_without_a_restart(region: dict[str, object]) -> None:
    """Issue 22: rotating the database password broke logins. The services read
    IPJMS_DB_PASSWORD_FILE at every new connection: after ALTER ROLE and a new file, the node's
    next connections (its old ones cut) log in with the new password, the old one is refused."""
    import httpx
    from psycopg import sql

    from deploy.launcher import wait_until

    password_file = Path(os.environ["IPJMS_DB_PASSWORD_FILE"])
    old, new = str(region["password"]), "rotated-" + os.urandom(12).hex()
    url = str(region["db"]["node"])  # type: ignore[index]

    def set_password(value: str, current: str) -> None:
        with psycopg.connect(url, password=current, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(value)))
        password_file.write_text(value + "\n")

    set_password(new, old)
    try:
        with psycopg.connect(url, password=new, autocommit=True) as conn:
            cut = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = 'node' AND pid <> pg_backend_pid()"
            ).fetchone()
        assert cut is not None and cut[0] >= 1  # the node's pooled connections are gone

        def ready() -> bool:
            return httpx.get(f"{region['node']}/healthz", timeout=10).status_code == 200

        wait_until(ready, 30, interval=0.5, what="the node ready on the rotated password")
        with psycopg.connect(url, password=new) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'node' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row is not None and row[0] >= 1  # it reconnected, with the new password
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url, password=old, connect_timeout=10).close()
    finally:
        set_password(old, new)
