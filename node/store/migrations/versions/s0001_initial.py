"""FHIR store: resource versions, current pointers and search-index tables.

Revision ID: s0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None

BODY = sa.JSON().with_variant(JSONB(), "postgresql")


def _owner() -> list[sa.Column]:
    return [
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "fhir_resource_version",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_updated", sa.DateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("body", BODY, nullable=False),
    )
    op.create_table(
        "fhir_resource",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    op.create_index(
        "ix_fhir_resource_type_updated", "fhir_resource", ["resource_type", "last_updated"]
    )

    op.create_table(
        "fhir_idx_token",
        *_owner(),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
    )
    op.create_index(
        "ix_fhir_idx_token_lookup",
        "fhir_idx_token",
        ["resource_type", "param", "code", "system", "resource_id"],
    )
    op.create_index(
        "ix_fhir_idx_token_owner",
        "fhir_idx_token",
        ["resource_type", "resource_id", "param", "code", "system"],
    )

    op.create_table(
        "fhir_idx_string",
        *_owner(),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("raw", sa.String(), nullable=False),
    )
    op.create_index(
        "ix_fhir_idx_string_lookup",
        "fhir_idx_string",
        ["resource_type", "param", "value", "resource_id"],
    )
    op.create_index(
        "ix_fhir_idx_string_owner",
        "fhir_idx_string",
        ["resource_type", "resource_id", "param", "value"],
    )

    op.create_table(
        "fhir_idx_date",
        *_owner(),
        sa.Column("low", sa.DateTime, nullable=False),
        sa.Column("high", sa.DateTime, nullable=False),
    )
    op.create_index("ix_fhir_idx_date_low", "fhir_idx_date", ["resource_type", "param", "low"])
    op.create_index("ix_fhir_idx_date_high", "fhir_idx_date", ["resource_type", "param", "high"])
    op.create_index(
        "ix_fhir_idx_date_owner",
        "fhir_idx_date",
        ["resource_type", "resource_id", "param", "low", "high"],
    )

    op.create_table(
        "fhir_idx_reference",
        *_owner(),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_fhir_idx_reference_target",
        "fhir_idx_reference",
        ["target_id", "target_type", "param", "resource_type", "resource_id"],
    )
    op.create_index(
        "ix_fhir_idx_reference_owner",
        "fhir_idx_reference",
        ["resource_type", "resource_id", "param", "target_type", "target_id"],
    )

    op.create_table(
        "fhir_idx_quantity",
        *_owner(),
        sa.Column("system", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_fhir_idx_quantity_lookup",
        "fhir_idx_quantity",
        ["resource_type", "param", "code", "value"],
    )
    op.create_index(
        "ix_fhir_idx_quantity_owner",
        "fhir_idx_quantity",
        ["resource_type", "resource_id", "param", "code", "value"],
    )


def downgrade() -> None:
    for name in (
        "fhir_idx_quantity",
        "fhir_idx_reference",
        "fhir_idx_date",
        "fhir_idx_string",
        "fhir_idx_token",
        "fhir_resource",
        "fhir_resource_version",
    ):
        op.drop_table(name)
