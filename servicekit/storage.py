"""Database engines and schema migrations shared by every service.

Each service owns its own database (SQLite file in its data dir by default, PostgreSQL in
production) and its own Alembic migration folder; this module is the one place that knows how to
open an engine safely and bring a schema to the latest revision.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, column, create_engine, event, select, table, text
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["at_head", "make_engine", "reader", "sqlite_url", "upgrade_schema", "is_postgres"]

_READ_ONLY = "ipjms_read_only"
# The file holding the PostgreSQL password (a mounted Secret): read per connection, see make_engine.
PASSWORD_FILE_ENV = "IPJMS_DB_PASSWORD_FILE"  # noqa: S105 - a variable name, not a password


def sqlite_url(data_dir: Path | str, name: str) -> str:
    """The default embedded database of a service: ``<data_dir>/<name>.db``."""
    path = Path(data_dir).resolve() / f"{name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def is_postgres(url_or_engine: str | Engine) -> bool:
    url = str(url_or_engine.url) if isinstance(url_or_engine, Engine) else url_or_engine
    return url.startswith("postgresql")


def _normalise(url: str) -> str:
    # psycopg 3 is the driver we ship; accept the plain scheme operators write.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


# Session settings for every PostgreSQL connection. ``random_page_cost``: PostgreSQL's default of 4
# models spinning disks; on the SSD/NVMe storage services run on it makes the planner hash-join a
# whole table (e.g. every Observation) instead of probing its primary key for the few hundred ids
# an index lookup found — a FHIR search then took ~40 ms instead of ~9 ms at 100,000 resources.
# 1.1 is the usual SSD value. A DBA's ``ALTER DATABASE … SET`` does not override a session value,
# so this is the one place to change it.
PG_SESSION_SETTINGS = {"random_page_cost": "1.1"}


def _pg_options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Open an engine with the settings every service needs.

    SQLite: WAL journal (readers never block the writer), foreign keys on, a busy timeout so
    concurrent writers wait instead of failing, and ``synchronous=FULL`` so an acknowledged
    commit survives a crash. PostgreSQL: a pre-pinged pool, and the planner told that random
    reads are cheap (:data:`PG_SESSION_SETTINGS`); the password, when ``IPJMS_DB_PASSWORD_FILE``
    names a file, read from it at each new connection (so rotation needs no restart). TLS is the
    URL's: ``?sslmode=verify-full&sslrootcert=…`` (libpq parameters, passed through).
    """
    url = _normalise(url)
    if url.startswith("sqlite"):
        # SQLAlchemy's default pool for a file (QueuePool) keeps connections open: opening one
        # costs the pragmas below, and closing the last one checkpoints the WAL — with a pool
        # that closed every connection (NullPool) a one-row transaction took 1.8 ms, not 0.5.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy manage transactions explicitly (BEGIN on first statement).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers: IMMEDIATE takes the write lock up front, so two writers cannot both read
            # and then deadlock on upgrade; SQLite serialises writers anyway. Readers (engines
            # derived with ``reader(engine)``) take a plain deferred BEGIN: under WAL they read
            # a consistent snapshot without queueing behind each other or behind writers.
            if conn.get_execution_options().get(_READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"options": _pg_options(PG_SESSION_SETTINGS)})
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if password_file:

        @event.listens_for(engine, "do_connect")
        def _password_from_file(_dialect: Any, _rec: Any, _args: Any, cparams: Any) -> None:
            # Read at every new connection, never kept in the environment: a rotated password
            # (a Kubernetes Secret volume updates in place) is used from the next connection.
            cparams["password"] = Path(password_file).read_text().strip()

    return engine


def reader(engine: Engine) -> Engine:
    """The same database for read-only work: on SQLite its transactions do not take the write
    lock (see ``make_engine``). Never write through it."""
    return engine.execution_options(**{_READ_ONLY: True})


# The advisory-lock key of every service's migrations (a PostgreSQL advisory lock is scoped to
# its database, and each service owns its database).
MIGRATION_LOCK_KEY = 0x1A2B_5EED


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.migrate.lock`` beside the SQLite file, taken before
    the migration's write transaction (so a waiting process holds no SQLite lock); the kernel
    releases it if the holder dies."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNSURE


_UNSURE = object()  # a value this module does not read without running the file


def _version_table(env_py: Path) -> str | None:
    """The version table ``env.py`` gives ``context.configure``, where it names it as a string
    (the ``version_table=`` argument, or a module-level constant that argument names) and names
    no version table schema; else None (unsure)."""
    tree = ast.parse(env_py.read_text())
    constants: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = _literal(stmt.value)
    found: set[Any] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "version_table_schema":
            return None
        if isinstance(node, ast.keyword) and node.arg == "version_table":
            value = node.value
            found.add(
                constants.get(value.id, _UNSURE) if isinstance(value, ast.Name) else _literal(value)
            )
    if len(found) != 1:
        return None
    name = found.pop()
    return name if isinstance(name, str) else None


def _script_heads(versions: Path) -> frozenset[str] | None:
    """The head revisions of the scripts in ``versions/``, read without importing them, where
    each states its ``revision`` and ``down_revision`` as literals and has no branch labels or
    dependencies; else None (unsure)."""
    if not versions.is_dir():
        return None
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in versions.iterdir():
        name = path.name
        if path.is_dir() or name.startswith(".#") or name.startswith("__init__"):
            continue
        if not name.endswith(".py"):
            if name.endswith((".pyc", ".pyo")):
                return None  # a sourceless revision: Alembic decides
            continue
        values: dict[str, Any] = {}
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target, value = stmt.target, stmt.value
            else:
                continue
            if isinstance(target, ast.Name):
                values[target.id] = _literal(value)
        revision, down = values.get("revision"), values.get("down_revision", _UNSURE)
        if not isinstance(revision, str) or revision in revisions:
            return None
        if values.get("branch_labels", _UNSURE) is not None:
            return None
        if values.get("depends_on", _UNSURE) is not None:
            return None
        if isinstance(down, str):
            downs.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            downs.update(down)
        elif down is not None:
            return None
        revisions.add(revision)
    heads = revisions - downs
    return frozenset(heads) if heads and downs <= revisions else None


def at_head(engine: Engine, migrations_dir: Path | str) -> bool:
    """True when the database's version table holds exactly the head revisions of
    ``migrations_dir``, read without loading Alembic or its script directory (the scripts are
    parsed, not imported). False when it does not, or when that cannot be told so cheaply (then
    Alembic decides, as it always did)."""
    folder = Path(migrations_dir)
    env_py = folder / "env.py"
    if not env_py.is_file():
        return False
    try:
        version_table = _version_table(env_py)
        heads = _script_heads(folder / "versions")
    except (OSError, SyntaxError, ValueError):  # Alembic reports it, as before
        return False
    if version_table is None or heads is None:
        return False
    query: Any = select(column("version_num")).select_from(table(version_table))
    try:  # a read: on SQLite it takes no write lock (``reader``)
        with reader(engine).connect() as conn:
            current = [row[0] for row in conn.execute(query)]
    except SQLAlchemyError:  # no version table yet (a new database)
        return False
    return len(current) == len(heads) and frozenset(current) == heads


def upgrade_schema(engine: Engine, migrations_dir: Path | str) -> None:
    """Run the Alembic migrations in ``migrations_dir`` (which holds env.py and versions/) under
    the database's migration lock, so services starting at once migrate it exactly once.

    PostgreSQL: ``pg_advisory_xact_lock`` in the migration's own transaction — the second of two
    services waits until the first commits, then finds the schema at head and changes nothing;
    the lock goes with the transaction, so a crashed migrator never leaves it held. SQLite: a
    file lock (:func:`_sqlite_file_lock`).

    A database already at head (:func:`at_head`: its version table read, the scripts' revisions
    parsed) is left as it is without loading Alembic (~0.08 CPU-s a start); any other — behind,
    new, ahead of these scripts, or one the cheap check cannot judge — goes through Alembic
    exactly as before (migrated, or refused).
    """
    if at_head(engine, migrations_dir):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    # configparser interpolates '%': a URL-encoded query (sslrootcert=%2F…) must be escaped
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    postgres = is_postgres(engine)
    with (
        nullcontext() if postgres else _sqlite_file_lock(engine),
        engine.begin() as conn,
    ):
        if postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
