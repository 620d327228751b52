"""Alembic environment of the node's account tables.

Shares the node database with the FHIR store but keeps its own version table
(``auth_alembic_version``), so the two migration histories never collide.
"""

from __future__ import annotations

from alembic import context

from node.auth.tables import metadata

VERSION_TABLE = "auth_alembic_version"


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - always called through servicekit.storage
        raise RuntimeError("run node auth migrations through servicekit.storage.upgrade_schema")
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run()
