"""Alembic environment of the FHIR store's tables.

Shares the node database with other node tables (accounts, ...) but keeps its own version table
(``store_alembic_version``), so the migration histories never collide. Run it through
``node.store.migrate(engine)`` (which calls ``servicekit.storage.upgrade_schema``).
"""

from __future__ import annotations

from alembic import context

from node.store.tables import metadata

VERSION_TABLE = "store_alembic_version"


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - always called through servicekit.storage
        raise RuntimeError("run store migrations through node.store.migrate(engine)")
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run()
