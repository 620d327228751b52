"""Fixtures of the model registry tests: a regional PKI, and the coordinator's HTTP app (the one
``ipjms coordinator serve`` runs, registry router mounted) over a migrated coordinator database
on SQLite and on PostgreSQL, with organisations registered in its directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from registry_app import BASE, ORGS, Pki, Registry

from coordinator.directory import Directory
from coordinator.http_api import create_status_app
from coordinator.registration import record_from_credentials
from coordinator.server import build_services, open_database
from coordinator.settings import CoordinatorSettings
from trust.pki import init_ca, issue_org, load_org


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_dir = root / "ca"
    init_ca(ca_dir)
    org_dirs, creds = {}, {}
    for org_id in ORGS:
        org_dirs[org_id] = root / "orgs" / org_id
        creds[org_id] = issue_org(ca_dir, org_id, out_dir=org_dirs[org_id])
    foreign_ca = root / "foreign-ca"
    init_ca(foreign_ca, name="Some Other CA")
    foreign = issue_org(foreign_ca, "org-authority", out_dir=root / "foreign" / "org-authority")
    return Pki(ca_dir, org_dirs, creds, foreign)


@pytest.fixture
def registry(db_url: str, pki: Pki, tmp_path: Path) -> Iterator[Registry]:
    engine = open_database(db_url)  # the coordinator's Alembic migrations, as `serve` runs them
    directory = Directory(engine)
    for org_id, level in ORGS.items():
        if level is not None:
            directory.register(
                record_from_credentials(pki.org_dirs[org_id], name=org_id, level=level)
            )
    directory.set_revoked("org-revoked")
    settings = CoordinatorSettings(
        data_dir=tmp_path / "coordinator", ca_dir=pki.ca_dir, org_dir=pki.org_dirs["coordinator"]
    )
    creds = load_org(pki.org_dirs["coordinator"])
    app = create_status_app(build_services(settings, engine, creds), settings=settings, creds=creds)
    try:
        with TestClient(app, base_url=BASE) as client:
            yield Registry(client, engine, pki)
    finally:
        engine.dispose()
