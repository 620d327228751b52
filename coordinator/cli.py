"""`ipjms coordinator …` sub-commands: serve, register-org, revoke-org, orgs, dead-letters.

Heavy imports (grpc) happen inside the commands so ``ipjms --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Coordinator state folder (SQLite inside by default).")
]
DbUrl = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (default: SQLite).")]


def _engine(data_dir: Path, db: str | None):  # type: ignore[no-untyped-def]
    from coordinator.server import open_database
    from servicekit.storage import sqlite_url

    return open_database(db or sqlite_url(data_dir, "coordinator"))


@app.command()
def serve(
    data_dir: DataDir,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            help="gRPC (mutual TLS) port (0: any free one, and the status "
            "API's too; both written to <data dir>/bound-ports.json).",
        ),
    ] = 7443,
    http_port: Annotated[int, typer.Option(help="HTTP status API port (0: port+1).")] = 0,
    http_tls: Annotated[
        bool,
        typer.Option(
            "--http-tls", help="Serve the status API over HTTPS with the coordinator's TLS key."
        ),
    ] = False,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    db: DbUrl = None,
    ca_dir: Annotated[
        Path | None, typer.Option(help="Regional CA folder (CRL is re-read on change).")
    ] = None,
    org_dir: Annotated[
        Path | None, typer.Option(help="The coordinator's own credentials (ipjms pki issue).")
    ] = None,
    consent_url: Annotated[
        str | None, typer.Option(help="Consent registry URL (unset: refuse all data).")
    ] = None,
    max_envelope_bytes: Annotated[int | None, typer.Option(help="Largest sealed envelope.")] = None,
    rate_per_minute: Annotated[
        int | None, typer.Option(help="Envelopes per sender per minute.")
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option(help="Redeliver unacknowledged envelopes after this.")
    ] = None,
    checkpoint_interval: Annotated[
        float | None, typer.Option(help="Seconds between signed audit-ledger checkpoints.")
    ] = None,
    checkpoint_path: Annotated[
        Path | None,
        typer.Option(help="Checkpoint file (default DATA_DIR/audit-checkpoints.jsonl)."),
    ] = None,
    console_federated_dir: Annotated[
        Path | None,
        typer.Option(help="The authority's SuperLink data folder (console: quality indicators)."),
    ] = None,
    console_authority_dir: Annotated[
        Path | None,
        typer.Option(help="The authority's credentials (console: start training runs)."),
    ] = None,
    console_registry_url: Annotated[
        str | None,
        typer.Option(help="Model registry URL a console-started run publishes to."),
    ] = None,
) -> None:
    """Run the exchange broker: gRPC with mutual TLS, and the HTTP status API."""
    from coordinator.server import run
    from coordinator.settings import CoordinatorSettings

    given: dict[str, Any] = {
        "data_dir": data_dir,
        "port": port,
        "http_port": http_port,
        "http_tls": http_tls,
        "host": host,
        "db_url": db,
        "ca_dir": ca_dir,
        "org_dir": org_dir or data_dir / "credentials",
        "consent_url": consent_url,
        "max_envelope_bytes": max_envelope_bytes,
        "rate_per_minute": rate_per_minute,
        "lease_seconds": lease_seconds,
        "checkpoint_interval": checkpoint_interval,
        "checkpoint_path": checkpoint_path,
        "console_federated_dir": console_federated_dir,
        "console_authority_dir": console_authority_dir,
        "console_registry_url": console_registry_url,
    }
    settings = CoordinatorSettings(**{k: v for k, v in given.items() if v is not None})
    run(settings)


@app.command("register-org")
def register_org(
    data_dir: DataDir,
    db: DbUrl = None,
    credentials: Annotated[
        Path | None,
        typer.Option(help="The organisation's credentials folder (public certificates read)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    level: Annotated[
        str | None, typer.Option(help="tertiary | county | community | authority")
    ] = None,
    endpoint: Annotated[
        list[str] | None, typer.Option(help="KIND=URL, e.g. fhir=https://… (repeatable)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of [[organisation]] entries instead.")
    ] = None,
) -> None:
    """Register (or update) organisations in the directory — the authority's job."""
    from coordinator.directory import Directory
    from coordinator.registration import record_from_credentials, records_from_toml

    if config is not None:
        records = records_from_toml(config)
    else:
        if credentials is None or name is None or level is None:
            raise typer.BadParameter("give --credentials, --name and --level (or --config)")
        endpoints = []
        for item in endpoint or []:
            kind, sep, url = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"endpoint {item!r} is not KIND=URL")
            endpoints.append({"kind": kind, "url": url})
        records = [
            record_from_credentials(credentials, name=name, level=level, endpoints=endpoints)
        ]
    engine = _engine(data_dir, db)
    directory = Directory(engine)
    try:
        for record in records:
            try:
                directory.register(record)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            typer.echo(f"registered {record.org_id} ({record.level})")
    finally:
        engine.dispose()  # its connections closed now, not when collected (tests run it in-process)


@app.command("revoke-org")
def revoke_org(
    org_id: Annotated[str, typer.Argument(help="Organisation id.")],
    data_dir: DataDir,
    db: DbUrl = None,
) -> None:
    """Mark an organisation revoked in the directory (its calls are refused from now on)."""
    from coordinator.directory import Directory

    if not Directory(_engine(data_dir, db)).set_revoked(org_id, True):
        typer.echo(f"no organisation {org_id} in the directory", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {org_id}")


@app.command("analyst-add")
def analyst_add(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The coordinator's data dir.")],
    username: Annotated[str, typer.Option("--username")],
) -> None:
    """Add (or reset) an authority analyst's console account. Password from
    IPJMS_ANALYST_PASSWORD, else prompted."""
    import os

    from coordinator.console.analysts import AnalystAccounts

    password = os.environ.get("IPJMS_ANALYST_PASSWORD") or typer.prompt(
        f"Password for {username}", hide_input=True, confirmation_prompt=True
    )
    try:
        AnalystAccounts(data_dir).add(username, password)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"analyst {username} can sign in at /console")


@app.command("orgs")
def list_orgs(data_dir: DataDir, db: DbUrl = None) -> None:
    """List the directory."""
    from coordinator.directory import Directory

    for org in Directory(_engine(data_dir, db)).list():
        flags = " revoked" if org.revoked else ""
        typer.echo(f"{org.org_id}\t{org.level}\t{org.name}{flags}")


@app.command("dead-letters")
def dead_letters(data_dir: DataDir, db: DbUrl = None) -> None:
    """Envelopes that were not delivered, and why."""
    from coordinator.queue import EnvelopeQueue

    queue = EnvelopeQueue(_engine(data_dir, db), replica_id="cli")
    for st in queue.dead_letters():
        typer.echo(f"{st.envelope_id}\t{st.sender}->{st.recipient}\t{st.kind}\t{st.reason}")
