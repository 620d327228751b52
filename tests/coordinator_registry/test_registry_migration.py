"""The model registry's table comes from the coordinator's Alembic migrations (revision 0002):
a fresh database gets exactly the tables the code describes, and an existing coordinator
database — at revision 0001, with or without the ``fl_models`` table the registry used to create
itself — upgrades in place and keeps its rows. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, select, text

from coordinator.directory import Directory, OrgRecord
from coordinator.model_registry.store import ModelStore
from coordinator.model_registry.store import metadata as registry_metadata
from coordinator.schema import metadata as coordinator_metadata
from coordinator.server import MIGRATIONS, open_database
from servicekit.storage import make_engine, upgrade_schema

VERSION_TABLE = "alembic_version_coordinator"
CARD = {"task": "readmission-30d", "feature_spec": "readmission-30d@1", "rounds": 1}


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


HEAD = ScriptDirectory.from_config(_config()).get_current_head()


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Like servicekit.storage.upgrade_schema, to a given revision (as an older coordinator ran)."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one())


def _assert_matches(engine: Engine, metadata: MetaData) -> None:
    insp = inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in insp.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        pk = insp.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes(table.name)}
        assert indexes == {i.name: [c.name for c in i.columns] for i in table.indexes}, table.name


def _old_coordinator(db_url: str) -> Engine:
    """A coordinator database as the previous release left it: revision 0001, one organisation."""
    engine = make_engine(db_url)
    _migrate(engine, "0001")
    Directory(engine).register(OrgRecord("org-authority", "Authority", "authority"))
    return engine


def test_fresh_database_has_the_described_tables(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        assert _version(engine) == HEAD
        _assert_matches(engine, coordinator_metadata)
        _assert_matches(engine, registry_metadata)
    finally:
        engine.dispose()


def test_upgrade_of_an_existing_coordinator_adds_the_registry(db_url: str) -> None:
    engine = _old_coordinator(db_url)
    try:
        assert not inspect(engine).has_table("fl_models")
        upgrade_schema(engine, MIGRATIONS)  # what `ipjms coordinator serve` does on start
        assert _version(engine) == HEAD
        _assert_matches(engine, registry_metadata)
        assert Directory(engine).get("org-authority") is not None  # its data kept
        store = ModelStore(engine)
        stored = store.add(CARD, {"w": 1}, created_by="org-authority", published=True)
        assert [m.id for m in store.list("readmission-30d", published_only=True)] == [stored.id]
        upgrade_schema(engine, MIGRATIONS)  # idempotent at head
        assert _version(engine) == HEAD
    finally:
        engine.dispose()


@pytest.mark.parametrize("index", [True, False], ids=["with-index", "index-lost"])
def test_upgrade_keeps_models_of_the_self_created_table(db_url: str, index: bool) -> None:
    """Coordinators that ran the registry before 0002 have fl_models already (create_all)."""
    engine = _old_coordinator(db_url)
    try:
        registry_metadata.create_all(engine)  # exactly what the registry's old migrate() did
        with engine.begin() as conn:
            if not index:
                conn.execute(text("DROP INDEX ix_fl_models_task"))
            conn.execute(
                registry_metadata.tables["fl_models"].insert(),
                {
                    "id": "m-old",
                    "task": "readmission-30d",
                    "feature_spec": "readmission-30d@1",
                    "published": True,
                    "created_at": time.time(),
                    "created_by": "org-authority",
                    "card": json.dumps({**CARD, "model_id": "m-old"}),
                    "weights": b'{"w": 1}',
                },
            )
        upgrade_schema(engine, MIGRATIONS)
        assert _version(engine) == HEAD
        _assert_matches(engine, registry_metadata)
        store = ModelStore(engine)
        old = store.get("m-old")
        assert old is not None and old.card["model_id"] == "m-old"
        assert store.weights("m-old") == {"w": 1}
    finally:
        engine.dispose()


def test_downgrade_removes_only_the_registry(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        _migrate(engine, "0001", down=True)
        assert _version(engine) == "0001"
        assert not inspect(engine).has_table("fl_models")
        assert inspect(engine).has_table("envelopes")
        upgrade_schema(engine, MIGRATIONS)
        _assert_matches(engine, registry_metadata)
        with engine.connect() as conn:
            count = conn.execute(select(registry_metadata.tables["fl_models"].c.id)).all()
        assert count == []
    finally:
        engine.dispose()
