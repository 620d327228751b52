"""The store's tables (SQLAlchemy Core). The schema itself is created by the Alembic migrations in
``node/store/migrations``; keep the two in step (a test compares them).

* ``fhir_resource_version`` — every version (type, id, version, lastUpdated, deleted, body).
  Its primary key (type, id, version) is what stops two writers creating the same version.
* ``fhir_resource`` — one row per logical resource: the current version and deleted flag.
* ``fhir_idx_*`` — search-index rows of the current version, rewritten in the same transaction.
  Each has a *lookup* index (type, param, value…) that finds candidates and a covering *owner*
  index (type, id, param, value…) that checks one candidate (see search_query._Filter).
* ``fhir_commit_log`` — one row per committed change (the commit events), numbered by
  ``position`` in commit order; ``fhir_commit_log_head`` (one row) hands out the positions and
  ``fhir_commit_subscriber`` keeps how far each named subscriber has read
  (see :mod:`node.store.commit_log`).
* ``fhir_transaction_key`` — an ``Idempotency-Key`` per writer with the hash of its transaction
  Bundle and the response sent, written with the transaction (see
  :mod:`node.store.transaction_keys`).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    Join,
    MetaData,
    String,
    Table,
    and_,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "metadata",
    "resource_version",
    "resource",
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_reference",
    "idx_quantity",
    "INDEX_TABLES",
    "with_owner",
    "BODY_TYPE",
    "commit_log",
    "commit_log_head",
    "commit_subscriber",
    "transaction_key",
]

BODY_TYPE = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()

resource_version = Table(
    "fhir_resource_version",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True, autoincrement=False),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", BODY_TYPE, nullable=False),
)

resource = Table(
    "fhir_resource",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Index("ix_fhir_resource_type_updated", "resource_type", "last_updated"),
)


def with_owner(index: Table) -> Join:
    """An index table joined to the current row of the resource each index row belongs to
    (filter on ``resource.c.deleted`` for live owners only)."""
    return index.join(
        resource,
        and_(
            resource.c.resource_type == index.c.resource_type,
            resource.c.resource_id == index.c.resource_id,
        ),
    )


def _owner_columns() -> list[Column]:
    return [
        Column("resource_type", String(64), nullable=False),
        Column("resource_id", String(64), nullable=False),
        Column("param", String(64), nullable=False),
    ]


idx_token = Table(
    "fhir_idx_token",
    metadata,
    *_owner_columns(),
    Column("system", String(), nullable=False),
    Column("code", String(), nullable=False),
    Index("ix_fhir_idx_token_lookup", "resource_type", "param", "code", "system", "resource_id"),
    Index("ix_fhir_idx_token_owner", "resource_type", "resource_id", "param", "code", "system"),
)

idx_string = Table(
    "fhir_idx_string",
    metadata,
    *_owner_columns(),
    Column("value", String(), nullable=False),
    Column("raw", String(), nullable=False),
    Index("ix_fhir_idx_string_lookup", "resource_type", "param", "value", "resource_id"),
    Index("ix_fhir_idx_string_owner", "resource_type", "resource_id", "param", "value"),
)

idx_date = Table(
    "fhir_idx_date",
    metadata,
    *_owner_columns(),
    Column("low", DateTime, nullable=False),
    Column("high", DateTime, nullable=False),
    Index("ix_fhir_idx_date_low", "resource_type", "param", "low"),
    Index("ix_fhir_idx_date_high", "resource_type", "param", "high"),
    Index("ix_fhir_idx_date_owner", "resource_type", "resource_id", "param", "low", "high"),
)

idx_reference = Table(
    "fhir_idx_reference",
    metadata,
    *_owner_columns(),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Index(
        "ix_fhir_idx_reference_target",
        "target_id",
        "target_type",
        "param",
        "resource_type",
        "resource_id",
    ),
    Index(
        "ix_fhir_idx_reference_owner",
        "resource_type",
        "resource_id",
        "param",
        "target_type",
        "target_id",
    ),
)

idx_quantity = Table(
    "fhir_idx_quantity",
    metadata,
    *_owner_columns(),
    Column("system", String(), nullable=False),
    Column("code", String(), nullable=False),
    Column("value", Float, nullable=False),
    Index("ix_fhir_idx_quantity_lookup", "resource_type", "param", "code", "value"),
    Index("ix_fhir_idx_quantity_owner", "resource_type", "resource_id", "param", "code", "value"),
)

INDEX_TABLES = {
    "token": idx_token,
    "string": idx_string,
    "date": idx_date,
    "reference": idx_reference,
    "quantity": idx_quantity,
}

commit_log = Table(
    "fhir_commit_log",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("commit_seq", BigInteger, nullable=False),  # the same for every change of one commit
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("interaction", String(8), nullable=False),  # create | update | delete
    Column("writer", String(200), nullable=False),
    Column("committed_at", DateTime, nullable=False),
)

commit_log_head = Table(
    "fhir_commit_log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),  # the last position handed out
    Column("commit_seq", BigInteger, nullable=False),  # the last commit number handed out
)

commit_subscriber = Table(
    "fhir_commit_subscriber",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),  # every event up to here is handled
    Column("updated_at", DateTime, nullable=False),
)

transaction_key = Table(
    "fhir_transaction_key",
    metadata,
    Column("writer", String(200), primary_key=True),  # keys are per writer: no cross-talk
    Column("idempotency_key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # sha256 of the canonical request Bundle
    Column("response", BODY_TYPE, nullable=False),  # the transaction-response Bundle sent
    Column("created_at", DateTime, nullable=False),
)
