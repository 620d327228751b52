"""Alembic environment of the consent registry (run via servicekit.storage.upgrade_schema)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from consent.schema import metadata

VERSION_TABLE = "alembic_version_consent"
config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
else:  # pragma: no cover - `alembic` command line use
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
