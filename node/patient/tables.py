"""The node's patient-side tables (SQLAlchemy Core). Schema changes go through ./migrations."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table

__all__ = ["metadata", "patient_links", "education_read"]

metadata = MetaData()

# Which local Patient a regional pseudonym (the ``sub`` of a patient's sign-in token) is: found
# once through the linkage key (node/patient/links.py), then remembered.
patient_links = Table(
    "node_patient_links",
    metadata,
    Column("pseudonym", String(128), primary_key=True),
    Column("patient_id", String(64), nullable=False),
)

# Which education items (node/patient/education.py) a patient marked read, and when.
education_read = Table(
    "node_patient_education_read",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("item_id", String(64), primary_key=True),
    Column("read_at", DateTime(timezone=True), nullable=False),
)
