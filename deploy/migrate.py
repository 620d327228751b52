"""``ipjms migrate --service S --db URL``: bring one service's database schema to head and stop.

Run by the Helm chart's pre-upgrade Job (deploy/helm/ipjms/templates/migrate-jobs.yaml) before
new pods start, so an upgrade's migration never runs inside a serving pod. Each service also
migrates when it starts; both go through ``servicekit.storage.upgrade_schema``, under the
database's migration lock, so whichever comes second finds the schema at head.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["migrate"]


class Service(StrEnum):
    node = "node"
    consent = "consent"
    coordinator = "coordinator"


def migrate(
    service: Annotated[Service, typer.Option("--service", help="Whose schema to migrate.")],
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="IPJMS_DB_URL",
            help="The service's database URL (password: IPJMS_DB_PASSWORD_FILE).",
        ),
    ],
) -> None:
    """Migrate a service's database to the newest schema (idempotent; under a lock)."""
    from servicekit.storage import make_engine, upgrade_schema

    engine = make_engine(db)
    try:
        if service is Service.node:
            from node.schemas import migrate_schemas

            migrate_schemas(engine)
        elif service is Service.consent:
            from consent.store import migrate as migrate_consent

            migrate_consent(engine)
        else:
            from coordinator.server import MIGRATIONS

            upgrade_schema(engine, MIGRATIONS)
    except Exception as exc:
        typer.echo(f"error: migrating the {service.value} database failed: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(f"{service.value} database at the newest schema")
