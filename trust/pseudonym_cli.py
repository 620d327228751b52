"""`ipjms pseudonym …`: the pseudonymisation authority (trust/oprf_service.py) and its keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

pseudonym_app = typer.Typer(no_args_is_help=True)


@pseudonym_app.command("serve")
def serve(
    data_dir: Annotated[Path, typer.Option(help="State folder (keys, SQLite).")] = Path(
        "pseudonym-data"
    ),
    port: Annotated[int, typer.Option(help="TCP port (0: any free one, announced).")] = 8400,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    db: Annotated[str | None, typer.Option(help="Database URL (default SQLite).")] = None,
    ca_dir: Annotated[
        Path | None, typer.Option(help="Regional CA folder: organisations authenticate against it.")
    ] = None,
    org_id: Annotated[str | None, typer.Option(help="This service's organisation id.")] = None,
    client: Annotated[
        list[str] | None, typer.Option("--client", help="An organisation that may evaluate.")
    ] = None,
    public_url: Annotated[str | None, typer.Option(help="Public base URL (audience).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The TLS key.")] = None,
) -> None:
    """Run the pseudonymisation authority: RFC 9497 OPRF evaluations for the region's nodes."""
    from servicekit.http_serving import serve_uvicorn
    from servicekit.logging_setup import configure_logging
    from servicekit.ports import announce_ports, bind_listener
    from trust.group_backend import GroupUnavailableError, selected
    from trust.oprf_service import PseudonymSettings, create_app
    from trust.pseudonym_keys import KeyRingError

    try:
        selected()
    except GroupUnavailableError as exc:
        typer.echo(f"ipjms pseudonym serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    try:
        sock = bind_listener(host, port)
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    port = int(sock.getsockname()[1])
    scheme = "https" if tls_cert else "http"
    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "public_url": public_url or f"{scheme}://{host}:{port}",
    }
    for name, value in (("db_url", db), ("ca_dir", ca_dir), ("org_id", org_id)):
        if value:
            overrides[name] = value
    if client:
        overrides["clients"] = list(client)
    tls: dict[str, Any] = {}
    if tls_cert is not None and tls_key is not None:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
        if os.environ.get("IPJMS_TLS_KEY_PASSPHRASE"):
            tls["ssl_keyfile_password"] = os.environ["IPJMS_TLS_KEY_PASSPHRASE"]
    configure_logging("pseudonym")
    try:
        app = create_app(PseudonymSettings(**overrides))
    except KeyRingError as exc:
        sock.close()
        typer.echo(f"ipjms pseudonym serve: {exc}", err=True)
        raise typer.Exit(2) from None
    announce_ports(data_dir, http=port)
    serve_uvicorn(sock, app, log_level="warning", access_log=False, log_config=None, **tls)


@pseudonym_app.command("rotate-key")
def rotate_key(
    data_dir: Annotated[Path, typer.Option(help="The service's state folder.")] = Path(
        "pseudonym-data"
    ),
) -> None:
    """Add a new OPRF key version and make it current (older versions stay until retired);
    restart the service to serve it."""
    from trust.oprf_service import PseudonymSettings
    from trust.pseudonym_keys import KeyRingError, rotate

    try:
        version = rotate(PseudonymSettings(data_dir=data_dir).keys_dir())
    except KeyRingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"OPRF key version {version} is current")


@pseudonym_app.command("retire-key")
def retire_key(
    version: Annotated[int, typer.Argument(help="The old key version to delete.")],
    data_dir: Annotated[Path, typer.Option(help="The service's state folder.")] = Path(
        "pseudonym-data"
    ),
) -> None:
    """Delete an old key version (never the current one). Consents recorded under it are
    then out of reach of exchange (fail closed) until the patient consents again: retire a
    version only once its patients have re-consented."""
    from trust.oprf_service import PseudonymSettings
    from trust.pseudonym_keys import KeyRingError, retire

    try:
        retire(PseudonymSettings(data_dir=data_dir).keys_dir(), version)
    except KeyRingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"OPRF key version {version} retired: consents recorded under it are no longer reached "
        "(a patient who had not re-consented must enrol and consent again)"
    )
