"""Database engines and schema migrations shared by every service.

Each service owns its own database (SQLite file in its data dir by default, PostgreSQL in
production) and its own Alembic migration folder; this module is the one place that knows how to
open an engine safely and bring a schema to the latest revision.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

__all__ = ["make_engine", "reader", "sqlite_url", "upgrade_schema", "is_postgres"]

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


def upgrade_schema(engine: Engine, migrations_dir: Path | str) -> None:
    """Run the Alembic migrations in ``migrations_dir`` (which holds env.py and versions/) under
    the database's migration lock, so services starting at once migrate it exactly once.

    PostgreSQL: ``pg_advisory_xact_lock`` in the migration's own transaction — the second of two
    services waits until the first commits, then finds the schema at head and changes nothing;
    the lock goes with the transaction, so a crashed migrator never leaves it held. SQLite: a
    file lock (:func:`_sqlite_file_lock`).
    """
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
