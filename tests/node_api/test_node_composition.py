"""The node's composition root (node/app.py): every feature listed, each router mounted once,
each schema migrated once in one place, services built once and shared, and background work in
exactly one worker of two on one data dir. The same with real processes (``ipjms node serve
--workers 2``: migrated once by the parent, one MLLP listener, one background leader) is checked
by ``test_node_cli.test_two_workers_share_replay_protection_and_metrics``,
which starts that server anyway."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

import node
from node.app import FEATURES, create_app, migration_folders
from node.feature import BackgroundTask, Feature, NodeServices
from node.schemas import SCHEMAS
from node.settings import load_settings
from node.store import validation
from trust.pki import init_ca, issue_org


def _features_defined_in_node() -> dict[str, Feature]:
    """Every module-level Feature in the node package, by name (a feature written but not
    listed would be dead code)."""
    found: dict[str, Feature] = {}
    for info in pkgutil.walk_packages(node.__path__, "node."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Feature):
                found[value.name] = value
    return found


def test_composition_root_lists_every_feature_of_the_node() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names)), names
    # the node's features today (the web pages are the portal feature)
    assert {"fhir-api", "auth", "exchange", "enrolment", "hl7-feed", "care", "portal"} <= set(names)
    defined = _features_defined_in_node()
    assert set(defined) == set(names), "a Feature is defined but not listed in node.app.FEATURES"
    for feature in FEATURES:
        assert defined[feature.name] is feature


def _mounted(app: Any) -> Counter[int]:
    """How often each router is included in the app (FastAPI keeps included routers as
    branches with ``original_router``; older versions copied their routes — count those)."""
    counts: Counter[int] = Counter()
    for route in app.router.routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            counts[id(included)] += 1
    return counts


def test_each_feature_router_is_mounted_once(tmp_path: Path) -> None:
    app = create_app(load_settings(tmp_path / "node", org_id="org-comp"))
    try:
        mounted = _mounted(app)
        routers = [router for f in FEATURES for router in f.routers]
        assert routers, "the features offer no routers"
        for router in routers:
            assert mounted[id(router)] == 1, [r.path for r in router.routes]
        assert sum(mounted.values()) == len(routers)  # and nothing else
        with TestClient(app) as client:  # each answers at its path (unauthenticated → 401)
            assert client.get("/fhir/Patient").status_code == 401
            assert client.get("/exchange/inbox").status_code == 401
            assert client.post("/consent/enrolment-code", json={}).status_code == 401
            assert client.get("/care/alerts/stream").status_code == 401
            assert client.post("/auth/token", data={"grant_type": "password"}).status_code == 400
    finally:
        app.state.engine.dispose()


def _migrated(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.feature, getattr(r, "folder", "-"))  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "ipjms.node" and r.getMessage() == "schema migrated"
    ]


def _heads_in_database(engine: Any) -> set[str]:
    with engine.connect() as conn:
        return {
            str(version)
            for table in inspect(conn).get_table_names()
            if "alembic_version" in table
            for version in conn.execute(text(f"SELECT version_num FROM {table}")).scalars()
        }


def test_every_schema_is_migrated_once_in_one_place(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(tmp_path / "node", org_id="org-comp", db_url=db_url)
    with caplog.at_level(logging.INFO, logger="ipjms.node"):
        app = create_app(settings)
    runs = _migrated(caplog)
    wanted = [("store", "-")] + [
        (name, f"{folder.parent.name}/{folder.name}") for name, folder in migration_folders()
    ]
    assert runs == wanted  # each once, the store first, then the features in list order
    assert {"auth", "exchange"} <= {name for name, _ in runs}
    # … and each folder's schema is at its head revision
    assert _heads_in_database(app.state.engine) >= {
        ScriptDirectory(str(folder)).get_current_head() for _, folder in migration_folders()
    }
    app.state.engine.dispose()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ipjms.node"):
        worker = create_app(settings, migrate=False)  # a worker process: the parent migrated
    assert _migrated(caplog) == []
    worker.state.engine.dispose()


def test_the_light_schema_list_is_the_features_migrations() -> None:
    """The offline commands migrate through node.schemas.SCHEMAS without importing the features:
    it names the same folders, for the same features, in the same order as FEATURES offers."""
    assert migration_folders(SCHEMAS) == migration_folders(FEATURES)
    assert migration_folders() == migration_folders(FEATURES)
    assert all(folder.is_dir() for _, folder in migration_folders())


def test_the_offline_commands_do_not_import_the_features(tmp_path: Path) -> None:
    """`ipjms node init|user add|seed|…` open the database through node.schemas: loading the CLI
    and migrating every schema imports no router, no FastAPI and not the composition root."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import deploy.cli\n"
        "from node.schemas import open_store\n"
        "from node.settings import load_settings\n"
        "folder = Path(sys.argv[1])\n"
        "settings = load_settings(folder / 'node', org_id='org-light', "
        "db_url=f'sqlite:///{folder}/light.db')\n"
        "engine, store = open_store(settings)\n"
        "engine.dispose()\n"
        "heavy = ('node.app', 'fastapi', 'node.api.feature', 'node.portal', "
        "'node.care.lifecycle', 'httpx')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_a_migration_folder_offered_twice_is_refused() -> None:
    folder = next(f for f in FEATURES if f.migrations).migrations[0]
    twice = (*FEATURES, Feature(name="copy", migrations=(folder,)))
    with pytest.raises(ValueError, match="offered by both"):
        migration_folders(twice)


@pytest.fixture(scope="module")
def org_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("ca")
    init_ca(ca)
    issue_org(ca, "org-comp")
    return ca / "orgs" / "org-comp"


@pytest.fixture
def closed_ports() -> Iterator[tuple[int, int]]:
    """Two loopback ports held bound but not listening: nothing answers there, and no other
    process can take them while the test runs (a released free port could be)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        yield a.getsockname()[1], b.getsockname()[1]


def test_exchange_and_enrolment_share_the_services_built_once(
    tmp_path: Path, org_dir: Path, closed_ports: tuple[int, int]
) -> None:
    consent_port, coordinator_port = closed_ports
    settings = load_settings(
        tmp_path / "node",
        org_id="org-comp",
        consent_url=f"http://127.0.0.1:{consent_port}",  # legacy flat names still work
        org_credentials_dir=org_dir,
        exchange={"coordinator_address": f"127.0.0.1:{coordinator_port}"},
    )
    app = create_app(settings)
    services: NodeServices = app.state.services
    assert services.consent is not None and services.credentials is not None
    assert services.credentials.org_id == "org-comp"
    with TestClient(app):
        ctx = app.state.exchange
        assert ctx.consent is services.consent
        assert ctx.creds is services.credentials
        assert ctx.pseudonymiser is services.pseudonymiser
        assert ctx.store is services.store and ctx.engine is services.engine
    assert app.state.exchange is None


def test_credentials_of_another_organisation_stop_the_node(tmp_path: Path, org_dir: Path) -> None:
    settings = load_settings(
        tmp_path / "node",
        org_id="org-other",
        consent={"url": "http://127.0.0.1:9"},
        pki={"credentials_dir": org_dir},
    )
    with pytest.raises(RuntimeError, match="belong to org-comp, not org-other"):
        create_app(settings)


def test_fhir_models_that_do_not_load_stop_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only Patient's model loads at start (the others on first use), and that one is enough
    for a broken model library to stop the start rather than fail the first requests."""
    loaded: list[str] = []

    def broken(rtype: str) -> Any:
        loaded.append(rtype)
        raise ImportError(f"no model for {rtype}")

    monkeypatch.setattr(validation, "_model_class", broken)
    with pytest.raises(ImportError, match="no model for Patient"):
        create_app(load_settings(tmp_path / "node", org_id="org-comp"))
    assert loaded == ["Patient"]


def _counting_feature(events: list[str]) -> Feature:
    @asynccontextmanager
    async def startup(_services: NodeServices, _app: Any) -> AsyncIterator[None]:
        events.append("startup")
        yield

    @asynccontextmanager
    async def work(_services: NodeServices, _app: Any) -> AsyncIterator[None]:
        events.append("background started")
        yield
        events.append("background stopped")

    return Feature(
        name="counting",
        startup=(startup,),
        background=(BackgroundTask("work", work), BackgroundTask("off", work, lambda _s: False)),
    )


def test_background_work_runs_in_one_of_two_workers_on_one_data_dir(tmp_path: Path) -> None:
    events: list[str] = []
    features = (*FEATURES, _counting_feature(events))
    settings = load_settings(tmp_path / "node", org_id="org-comp")
    first = create_app(settings, features=features)
    second = create_app(settings, features=features, migrate=False)
    with TestClient(first), TestClient(second):
        assert events.count("startup") == 2  # every worker
        assert events.count("background started") == 1  # exactly one (the enabled task)
        leaders = [app.state.metrics.background_leader._value.get() for app in (first, second)]
        assert sorted(leaders) == [0, 1]
    assert events.count("background stopped") == 1
