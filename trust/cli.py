"""`ipjms pki …` and `ipjms audit …` sub-commands."""

from __future__ import annotations

import os
from pathlib import Path

import typer

pki_app = typer.Typer(no_args_is_help=True)
audit_app = typer.Typer(no_args_is_help=True)


def _passphrase(var: str | None) -> bytes | None:
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        typer.echo(f"error: environment variable {var} is not set or empty", err=True)
        raise typer.Exit(2)
    return value.encode()


@pki_app.command("init-ca")
def init_ca_cmd(
    ca_dir: Path = typer.Argument(..., help="Folder for the CA (created)."),
    name: str = typer.Option("IPJMS Regional CA", "--name", help="CA common name."),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="Env var holding a passphrase to encrypt the CA key."
    ),
    days: int = typer.Option(3650, "--days", min=1),
) -> None:
    """Create the regional authority's CA (self-signed, EC P-384) and an empty CRL."""
    from trust.pki import PkiError, init_ca

    try:
        init_ca(ca_dir, name=name, passphrase=_passphrase(passphrase_env), days=days)
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"CA created in {ca_dir}")


@pki_app.command("issue")
def issue_cmd(
    ca_dir: Path = typer.Argument(..., help="The CA folder."),
    org: str = typer.Option(..., "--org", help="Organisation id (CN and urn:ipjms:org: SAN)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Host name(s)/IP(s), comma-separated."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default DIR/orgs/ORG)."),
    days: int = typer.Option(365, "--days", min=1),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="Env var holding a passphrase to encrypt the org's keys."
    ),
    ca_passphrase_env: str | None = typer.Option(
        None, "--ca-passphrase-env", help="Env var holding the CA key's passphrase."
    ),
) -> None:
    """Issue (or rotate) an organisation's TLS, signing and encryption credentials."""
    from trust.certificates import CertificateError
    from trust.pki import PkiError, issue_org

    try:
        creds = issue_org(
            ca_dir,
            org,
            host=host,
            out_dir=out,
            days=days,
            passphrase=_passphrase(passphrase_env),
            ca_passphrase=_passphrase(ca_passphrase_env),
        )
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    target = out or ca_dir / "orgs" / org
    typer.echo(f"issued credentials for {creds.org_id} in {target}")
    typer.echo(f"  tls fingerprint sha256:{creds.tls_fingerprint}")


@pki_app.command("revoke")
def revoke_cmd(
    ca_dir: Path = typer.Argument(..., help="The CA folder."),
    org: str | None = typer.Option(None, "--org", help="Revoke every certificate of this org."),
    serial: str | None = typer.Option(None, "--serial", help="Revoke one certificate (hex)."),
    ca_passphrase_env: str | None = typer.Option(None, "--ca-passphrase-env"),
) -> None:
    """Revoke an organisation or one certificate; re-issues the CA-signed CRL."""
    from trust.certificates import CertificateError
    from trust.pki import PkiError, revoke

    try:
        serial_int = int(serial, 16) if serial is not None else None
    except ValueError:
        typer.echo(f"error: serial {serial!r} is not hexadecimal", err=True)
        raise typer.Exit(2) from None
    try:
        added = revoke(ca_dir, org, serial=serial_int, ca_passphrase=_passphrase(ca_passphrase_env))
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {len(added)} certificate(s); CRL updated in {ca_dir}")


@audit_app.command("verify")
def audit_verify_cmd(
    db: str | None = typer.Option(None, "--db", help="Database URL holding the ledger."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="A service's data folder."),
    service: str | None = typer.Option(
        None, "--service", help="With --data-dir: the service's database name (<dir>/<name>.db)."
    ),
) -> None:
    """Check a service's audit ledger; exit 1 naming the first edited/deleted/reordered entry."""
    from servicekit.storage import make_engine
    from trust.audit_ledger import AuditLedger

    if db is None:
        if data_dir is None or service is None:
            typer.echo("error: give --db URL, or --data-dir DIR and --service NAME", err=True)
            raise typer.Exit(2)
        path = data_dir / f"{service}.db"
        if not path.exists():
            typer.echo(f"error: no database at {path}", err=True)
            raise typer.Exit(2)
        db = f"sqlite:///{path.resolve()}"
    elif db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        typer.echo(f"error: no database at {db}", err=True)
        raise typer.Exit(2)
    engine = make_engine(db)
    try:
        ledger = AuditLedger(engine, create=False)
        if not ledger.exists():
            typer.echo("error: this database holds no audit ledger", err=True)
            raise typer.Exit(2)
        report = ledger.verify()
    finally:
        engine.dispose()
    if report.ok:
        typer.echo(str(report))
        return
    typer.echo(f"ledger broken: {report}")
    raise typer.Exit(1)
