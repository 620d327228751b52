"""Fixtures for the exchange tests: a regional PKI, organisation credentials, and a coordinator
started as a real process (``ipjms coordinator serve``) with mutual TLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from exchange_net import ORGS, REGISTRY_ORG, Coordinator, register, start_coordinator_process

from trust.pki import OrgCredentials, init_ca, issue_org


@dataclass
class Pki:
    ca_dir: Path
    org_dirs: dict[str, Path]
    creds: dict[str, OrgCredentials]
    foreign: OrgCredentials  # an organisation issued by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_dir = root / "ca"
    init_ca(ca_dir)
    org_dirs, creds = {}, {}
    for org_id in [*ORGS, "unregistered", REGISTRY_ORG]:
        org_dirs[org_id] = root / "orgs" / org_id
        creds[org_id] = issue_org(ca_dir, org_id, out_dir=org_dirs[org_id])
    foreign_ca = root / "foreign-ca"
    init_ca(foreign_ca, name="Some Other CA")
    foreign = issue_org(foreign_ca, "hosp-a", out_dir=root / "foreign" / "hosp-a")
    return Pki(ca_dir, org_dirs, creds, foreign)


@pytest.fixture
def start_coordinator(pki: Pki, tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    started: list[Coordinator] = []

    def start(*extra: str, consent_url: str | None = None, db: str | None = None) -> Coordinator:
        data_dir = tmp_path / f"coordinator{len(started)}"
        data_dir.mkdir()
        register(data_dir, pki, db)
        extra_args = list(extra)
        if consent_url:
            extra_args += ["--consent-url", consent_url]
        if db:
            extra_args += ["--db", db]
        coordinator = start_coordinator_process(data_dir, pki, tmp_path / "logs", *extra_args)
        started.append(coordinator)
        return coordinator

    yield start
    for c in started:
        c.service.stop()
