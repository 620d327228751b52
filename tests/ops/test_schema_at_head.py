"""A service start skips Alembic for a schema already at head (``servicekit.storage.at_head``:
the version table read, the revision scripts parsed, not imported); every other database goes
through Alembic as before: a new or older one is migrated, one ahead of the scripts refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect, text

from servicekit.storage import (
    _script_heads,
    _version_table,
    at_head,
    make_engine,
    upgrade_schema,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "coordinator", "consent", "trust", "servicekit", "federated", "deploy")
FOLDERS = sorted(
    env.parent for package in PACKAGES for env in (REPO_ROOT / package).glob("**/migrations/env.py")
)
STORE = REPO_ROOT / "node" / "store" / "migrations"


def _name(folder: Path) -> str:
    return str(folder.relative_to(REPO_ROOT).parent)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _alembic(engine: Engine, folder: Path, action: str, revision: str) -> None:
    """Alembic run as upgrade_schema runs it, to ``revision`` (upgrade or stamp)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(folder))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


@pytest.fixture
def alembic_upgrades(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The revisions Alembic's upgrade was asked for (it still runs)."""
    calls: list[str] = []
    real = command.upgrade

    def upgrade(cfg: Config, revision: str, *args: object, **kwargs: object) -> None:
        calls.append(revision)
        real(cfg, revision, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(command, "upgrade", upgrade)
    return calls


def test_every_schema_folder_is_found() -> None:
    assert {_name(f) for f in FOLDERS} >= {
        "node/store",
        "node/auth",
        "node/exchange",
        "node/patient",
        "node/pseudonym_store",
        "coordinator",
        "consent",
    }


@pytest.mark.parametrize("folder", FOLDERS, ids=_name)
def test_the_cheap_check_reads_what_alembic_uses(folder: Path, tmp_path: Path) -> None:
    """Its heads are the script directory's, its version table the one Alembic creates; a new
    database is not at head, a migrated one is."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert not at_head(engine, folder)
        upgrade_schema(engine, folder)
        cfg = Config()
        cfg.set_main_option("script_location", str(folder))
        heads = frozenset(ScriptDirectory.from_config(cfg).get_heads())
        assert _script_heads(folder / "versions") == heads
        schema = inspect(engine)
        version_tables = [
            t
            for t in schema.get_table_names()
            if "version_num" in {c["name"] for c in schema.get_columns(t)}
        ]
        assert version_tables == [_version_table(folder / "env.py")]
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {version_tables[0]}")).scalars()  # noqa: S608
            assert frozenset(rows) == heads
        assert at_head(engine, folder)
    finally:
        engine.dispose()


def test_at_head_alembic_is_not_run(engine: Engine, alembic_upgrades: list[str]) -> None:
    upgrade_schema(engine, STORE)
    assert alembic_upgrades == ["head"]
    upgrade_schema(engine, STORE)  # a restart
    assert alembic_upgrades == ["head"]


def test_an_older_schema_is_migrated_as_before(engine: Engine, alembic_upgrades: list[str]) -> None:
    _alembic(engine, STORE, "upgrade", "s0002")
    assert not at_head(engine, STORE)
    upgrade_schema(engine, STORE)
    assert alembic_upgrades[-1] == "head"
    assert at_head(engine, STORE)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM store_alembic_version")).scalar() == (
            "s0003"
        )


def test_a_schema_ahead_of_the_scripts_is_refused_as_before(engine: Engine) -> None:
    upgrade_schema(engine, STORE)
    with engine.begin() as conn:  # a newer release migrated it
        conn.execute(text("UPDATE store_alembic_version SET version_num = 's9999'"))
    assert not at_head(engine, STORE)
    with pytest.raises(CommandError, match="s9999"):
        upgrade_schema(engine, STORE)


def test_two_rows_where_one_head_is_not_at_head(engine: Engine) -> None:
    upgrade_schema(engine, STORE)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO store_alembic_version (version_num) VALUES ('s0001')"))
    assert not at_head(engine, STORE)


def _folder(tmp_path: Path, env: str, scripts: dict[str, str]) -> Path:
    folder = tmp_path / "migrations"
    (folder / "versions").mkdir(parents=True)
    (folder / "env.py").write_text(env)
    for name, body in scripts.items():
        (folder / "versions" / name).write_text(body)
    return folder


ENV = 'VT = "v_table"\ncontext.configure(connection=c, version_table=VT)\n'
ONE = 'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
TWO = 'revision: str = "r2"\ndown_revision = "r1"\nbranch_labels = None\ndepends_on = None\n'


def test_the_parser_reads_literals_only_and_is_unsure_otherwise(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ENV, {"one.py": ONE, "two.py": TWO, "__init__.py": ""})
    assert _version_table(folder / "env.py") == "v_table"
    assert _script_heads(folder / "versions") == {"r2"}
    (folder / "env.py").write_text("context.configure(version_table=name_from_elsewhere)\n")
    assert _version_table(folder / "env.py") is None
    (folder / "env.py").write_text("context.configure(connection=c)\n")  # Alembic's default
    assert _version_table(folder / "env.py") is None
    (folder / "env.py").write_text(ENV + "context.configure(version_table_schema='s')\n")
    assert _version_table(folder / "env.py") is None
    for unsure in (
        TWO.replace("branch_labels = None", 'branch_labels = ("b",)'),
        TWO.replace("depends_on = None", 'depends_on = "x"'),
        TWO.replace('revision: str = "r2"', "revision = make()"),
        TWO.replace('down_revision = "r1"', 'down_revision = "missing"'),
        TWO.replace('revision: str = "r2"', 'revision = "r1"'),  # a revision twice
        TWO.replace("depends_on = None\n", ""),
    ):
        (folder / "versions" / "two.py").write_text(unsure)
        assert _script_heads(folder / "versions") is None, unsure
    (folder / "versions" / "two.py").write_text(TWO)
    (folder / "versions" / "three.py").write_text(
        'revision = "r3"\ndown_revision = "r1"\nbranch_labels = None\ndepends_on = None\n'
    )
    assert _script_heads(folder / "versions") == {"r2", "r3"}  # two heads, as Alembic has
