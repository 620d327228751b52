"""The node's database schemas and the one place they are migrated: :func:`migrate_schemas` (the
store's schema, then each feature's Alembic folders) and :func:`open_store`.

Light on purpose: no routers, no FastAPI. The offline commands (``ipjms node init``, ``user
add``, ``seed``, …) and ``ipjms migrate --service node`` open the database through here without
importing every feature; the composition root (``node/app.py``) runs the same code at ``serve``
and re-exports it.

:data:`SCHEMAS` lists each feature's Alembic folders in the order of ``node.app.FEATURES``; the
features take their ``migrations`` from the folder constants here, and a test checks that
``migration_folders(FEATURES) == migration_folders(SCHEMAS)``, so the two cannot drift.
A feature that adds migrations: a folder constant here, its entry in :data:`SCHEMAS`, and
``migrations=(…,)`` on its ``Feature``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from node.settings import NodeSettings
    from node.store import FhirStore

__all__ = [
    "AUTH_MIGRATIONS",
    "EXCHANGE_MIGRATIONS",
    "PATIENT_MIGRATIONS",
    "PSEUDONYM_MIGRATIONS",
    "SCHEMAS",
    "FeatureSchema",
    "HasMigrations",
    "migrate_schemas",
    "migration_folders",
    "open_store",
]

log = logging.getLogger("ipjms.node")

_NODE = Path(__file__).resolve().parent

# Each feature's Alembic folders (each with its own version table).
AUTH_MIGRATIONS = _NODE / "auth" / "migrations"
PSEUDONYM_MIGRATIONS = _NODE / "pseudonym_store" / "migrations"
EXCHANGE_MIGRATIONS = _NODE / "exchange" / "migrations"
PATIENT_MIGRATIONS = _NODE / "patient" / "migrations"


class HasMigrations(Protocol):
    """What :func:`migration_folders` reads: a ``Feature`` (node/feature.py) or a
    :class:`FeatureSchema`."""

    @property
    def name(self) -> str: ...

    @property
    def migrations(self) -> tuple[Path, ...]: ...


@dataclass(frozen=True)
class FeatureSchema:
    """A feature's name and its Alembic folders, without the feature (its routers, hooks)."""

    name: str
    migrations: tuple[Path, ...]


# The features that have tables, in the order of node.app.FEATURES (features without
# migrations are left out: they offer no folder).
SCHEMAS: tuple[FeatureSchema, ...] = (
    FeatureSchema("auth", (AUTH_MIGRATIONS,)),
    FeatureSchema("pseudonyms", (PSEUDONYM_MIGRATIONS,)),
    FeatureSchema("exchange", (EXCHANGE_MIGRATIONS,)),
    FeatureSchema("patient", (PATIENT_MIGRATIONS,)),
)


def migration_folders(features: Iterable[HasMigrations] = SCHEMAS) -> list[tuple[str, Path]]:
    """(feature name, Alembic folder) of every feature, in list order. A folder offered twice
    is a wiring mistake: refused, so no schema is ever migrated twice."""
    seen: dict[Path, str] = {}
    for feature in features:
        for folder in feature.migrations:
            resolved = folder.resolve()
            if resolved in seen:
                raise ValueError(f"{folder} is offered by both {seen[resolved]} and {feature.name}")
            seen[resolved] = feature.name
    return [(name, folder) for folder, name in seen.items()]


def migrate_schemas(engine: Engine, features: Iterable[HasMigrations] = SCHEMAS) -> None:
    """Bring the store's schema, then every feature's, to head (each has its own version
    table). The one place the node's migrations run."""
    from node.store import migrate as migrate_store
    from servicekit.storage import upgrade_schema

    migrate_store(engine)
    log.info("schema migrated", extra={"feature": "store"})
    for name, folder in migration_folders(features):
        upgrade_schema(engine, folder)
        log.info(
            "schema migrated",
            extra={"feature": name, "folder": f"{folder.parent.name}/{folder.name}"},
        )


def open_store(
    settings: NodeSettings, *, migrate: bool = True, features: Iterable[HasMigrations] = SCHEMAS
) -> tuple[Engine, FhirStore]:
    """Engine and FhirStore of the node; every schema migrated to head unless ``migrate`` is
    False (worker processes: the parent migrated once before starting them)."""
    from node.store import FhirStore
    from servicekit.storage import make_engine

    engine = make_engine(settings.database_url)
    if migrate:
        migrate_schemas(engine, features)
    return engine, FhirStore(
        engine,
        base_url=f"{settings.base_url}/fhir",
        referential_integrity=settings.api.delete_referential_integrity,
    )
