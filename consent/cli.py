"""`ipjms consent …` sub-commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _consent() -> None:
    """The consent registry: patients' FHIR Consents, signed decisions, disclosures."""


@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option(help="State folder (SQLite, keys).")] = Path(
        "consent-data"
    ),
    port: Annotated[
        int, typer.Option(help="TCP port (0: any free one, written to bound-ports.json).")
    ] = 8300,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    db: Annotated[
        str | None, typer.Option(help="Database URL (default SQLite in data dir).")
    ] = None,
    ca_dir: Annotated[
        Path | None, typer.Option(help="Regional CA folder: organisations authenticate against it.")
    ] = None,
    public_url: Annotated[
        str | None, typer.Option(help="Public base URL (token audience).")
    ] = None,
    org_id: Annotated[
        str | None, typer.Option(help="This registry's organisation id (audit observer).")
    ] = None,
    org_dir: Annotated[
        Path | None,
        typer.Option(help="The registry's credentials: decisions signed by its CA-issued key."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate (chain)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            help="The certificate's private key (a passphrase from IPJMS_TLS_KEY_PASSPHRASE).",
        ),
    ] = None,
) -> None:
    """Run the consent registry (HTTP; HTTPS with ``--tls-cert``/``--tls-key``, e.g. the
    registry organisation's ``tls.cert.pem``/``tls.key.pem`` from the regional PKI)."""
    from consent.app import create_app
    from consent.settings import RegistrySettings
    from servicekit.http_serving import serve_uvicorn
    from servicekit.ports import announce_ports, bind_listener

    try:  # bound before the app is built: with --port 0 the OS picks, and the app knows it
        sock = bind_listener(host, port)
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    port = int(sock.getsockname()[1])
    overrides: dict[str, object] = {"data_dir": data_dir, "port": port, "host": host}
    if db:
        overrides["db_url"] = db
    if ca_dir:
        overrides["ca_dir"] = ca_dir
    if public_url:
        overrides["public_url"] = public_url
    elif tls_cert is not None:  # served over HTTPS: the audience clients compute is https://…
        overrides["public_url"] = f"https://{host}:{port}"
    if org_id:
        overrides["org_id"] = org_id
    if org_dir:
        overrides["org_dir"] = org_dir
    from servicekit.logging_setup import configure_logging

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    tls: dict[str, Any] = {}
    if tls_cert is not None and tls_key is not None:
        for path in (tls_cert, tls_key):
            if not path.is_file():
                raise typer.BadParameter(f"TLS file not found: {path}")
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
        if os.environ.get("IPJMS_TLS_KEY_PASSPHRASE"):
            tls["ssl_keyfile_password"] = os.environ["IPJMS_TLS_KEY_PASSPHRASE"]
    configure_logging("consent")
    settings = RegistrySettings(**overrides)  # type: ignore[arg-type]
    app = create_app(settings)
    announce_ports(data_dir, http=port)
    serve_uvicorn(sock, app, log_level="warning", access_log=False, log_config=None, **tls)


@app.command("key-pin")
def key_pin(
    data_dir: Annotated[Path, typer.Option(help="The registry's state folder.")] = Path(
        "consent-data"
    ),
) -> None:
    """Print the RFC 7638 thumbprint of the key that signs patient tokens: a node pins it
    (``[consent] patient_key_pins``) to accept the region's patient sign-in over plain HTTP."""
    from trust.tokens import jwk_thumbprint, load_or_create_signing_key

    path = data_dir / "keys" / "access-token.pem"
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist: start the registry once first")
    typer.echo(jwk_thumbprint(load_or_create_signing_key(path).public_jwk()))
