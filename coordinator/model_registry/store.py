"""Model registry storage: one table in the coordinator's database.

The table is created by the coordinator's Alembic migrations (``coordinator/migrations``,
revision 0002), run by ``coordinator.server.open_database``; ``fl_models`` below is the one
description the code queries against.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.engine import Engine

from servicekit.storage import reader

__all__ = ["ModelStore", "StoredModel", "metadata", "models"]

metadata = MetaData()
models = Table(
    "fl_models",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("task", String(64), nullable=False),
    Column("feature_spec", String(64), nullable=False),
    Column("published", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("card", Text, nullable=False),
    Column("weights", LargeBinary, nullable=False),
    Index("ix_fl_models_task", "task"),
)


@dataclass(frozen=True)
class StoredModel:
    id: str
    task: str
    feature_spec: str
    published: bool
    created_at: float
    created_by: str
    card: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "feature_spec": self.feature_spec,
            "published": self.published,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "evaluation": self.card.get("evaluation", {}),
            "participants": [p.get("org") for p in self.card.get("participants", [])],
        }


def _row(row: Any) -> StoredModel:
    return StoredModel(
        row.id, row.task, row.feature_spec, bool(row.published), row.created_at, row.created_by,
        json.loads(row.card),
    )  # fmt: skip


class ModelStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # reads take no write lock on SQLite (servicekit.storage.reader): they do not queue
        # behind the writers' durable commits
        self._read = reader(engine)

    def add(
        self, card: dict[str, Any], weights: dict[str, Any], *, created_by: str, published: bool
    ) -> StoredModel:
        model_id = f"m-{uuid.uuid4().hex[:16]}"
        now = time.time()
        card = {**card, "model_id": model_id}
        with self.engine.begin() as conn:
            conn.execute(
                models.insert().values(
                    id=model_id,
                    task=str(card["task"]),
                    feature_spec=str(card["feature_spec"]),
                    published=published,
                    created_at=now,
                    created_by=created_by,
                    card=json.dumps(card),
                    weights=json.dumps(weights).encode(),
                )
            )
        return StoredModel(
            model_id, str(card["task"]), str(card["feature_spec"]), published, now, created_by, card
        )

    def get(self, model_id: str) -> StoredModel | None:
        with self._read.connect() as conn:
            row = conn.execute(select(models).where(models.c.id == model_id)).first()
        return _row(row) if row else None

    def weights(self, model_id: str) -> dict[str, Any] | None:
        with self._read.connect() as conn:
            row = conn.execute(select(models.c.weights).where(models.c.id == model_id)).first()
        return json.loads(row[0]) if row else None

    def list(self, task: str | None = None, *, published_only: bool = False) -> list[StoredModel]:
        q = select(models).order_by(models.c.created_at.desc())
        if task:
            q = q.where(models.c.task == task)
        if published_only:
            q = q.where(models.c.published.is_(True))
        with self._read.connect() as conn:
            return [_row(r) for r in conn.execute(q).all()]

    def set_published(self, model_id: str, published: bool) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                models.update().where(models.c.id == model_id).values(published=published)
            )
        return bool(res.rowcount)
