"""Alembic environment for the node's pseudonym store (run by servicekit.storage.upgrade_schema)."""

from __future__ import annotations

from alembic import context

from node.pseudonym_store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover
    raise RuntimeError("run migrations through servicekit.storage.upgrade_schema(engine, dir)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="alembic_version_node_pseudonyms",
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
