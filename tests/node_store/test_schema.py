"""The Alembic migrations create exactly the tables and indexes node/store/tables.py describes."""

from __future__ import annotations

from sqlalchemy import inspect

from node.store import FhirStore
from node.store.tables import metadata


def test_migrated_schema_matches_table_definitions(store: FhirStore) -> None:
    insp = inspect(store.engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in insp.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        pk = insp.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes(table.name)}
        expected = {i.name: [c.name for c in i.columns] for i in table.indexes}
        assert indexes == expected, table.name
