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


@pki_app.command("request")
def request_cmd(
    org_dir: Path = typer.Argument(..., help="The organisation's own credentials folder."),
    org: str = typer.Option(..., "--org", help="Organisation id (CN and urn:ipjms:org: SAN)."),
    host: str = typer.Option(..., "--host", help="Host name(s)/IP(s), comma-separated."),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="Env var holding a passphrase to encrypt the new keys."
    ),
) -> None:
    """Organisation side: make new keys (kept in ORG_DIR/pending/) and a certificate request to
    send to the authority — it holds public keys only."""
    from trust.certificate_requests import make_request
    from trust.certificates import CertificateError
    from trust.pki import PkiError

    try:
        path = make_request(org_dir, org, host=host, passphrase=_passphrase(passphrase_env))
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"request for {org} written to {path}: send it to the authority's CA")


@pki_app.command("sign-request")
def sign_request_cmd(
    ca_dir: Path = typer.Argument(..., help="The CA folder."),
    request: Path = typer.Argument(..., help="The organisation's request.pem."),
    org: str = typer.Option(..., "--org", help="The organisation the request must be from."),
    host: list[str] = typer.Option(
        ...,
        "--host",
        help="A TLS host name/IP the operator expects (repeatable or comma-separated); the "
        "request must name exactly these, no wildcard.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the certificates to send back."),
    days: int = typer.Option(365, "--days", min=1),
    ca_passphrase_env: str | None = typer.Option(
        None, "--ca-passphrase-env", help="Env var holding the CA key's passphrase."
    ),
) -> None:
    """Authority side: check an organisation's request and issue its TLS, signing and
    encryption certificates (the CA never sees the organisation's private keys)."""
    from trust.certificate_requests import sign_request
    from trust.certificates import CertificateError
    from trust.pki import PkiError

    try:
        checked = sign_request(
            ca_dir,
            request.read_bytes(),
            org_id=org,
            hosts=[h for item in host for h in item.split(",")],
            out_dir=out,
            days=days,
            ca_passphrase=_passphrase(ca_passphrase_env),
        )
    except OSError as exc:
        typer.echo(f"error: cannot read {request}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"issued certificates for {org} ({', '.join(checked.hosts)}) in {out}")


@pki_app.command("accept")
def accept_cmd(
    org_dir: Path = typer.Argument(..., help="The organisation's credentials folder."),
    issued: Path = typer.Argument(..., help="The folder of certificates the CA sent back."),
) -> None:
    """Organisation side: install the certificates for the pending request (the current
    credentials, if any, move to previous/<n>/)."""
    from trust.certificate_requests import accept
    from trust.certificates import CertificateError
    from trust.pki import PkiError

    try:
        accept(org_dir, issued)
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"credentials installed in {org_dir}")


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


def _open_ledger(db: str | None, data_dir: Path | None, service: str | None):  # type: ignore[no-untyped-def]
    """(engine, AuditLedger) of the database named by --db or --data-dir/--service."""
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
    ledger = AuditLedger(engine, create=False)
    if not ledger.exists():
        engine.dispose()
        typer.echo("error: this database holds no audit ledger", err=True)
        raise typer.Exit(2)
    return engine, ledger


@pki_app.command("reissue-crl")
def reissue_crl_cmd(
    ca_dir: Path = typer.Argument(..., help="The CA folder."),
    every: float | None = typer.Option(
        None, "--every", min=1, help="Keep running: check every N seconds (re-sign when due)."
    ),
    older_than_hours: float = typer.Option(
        0, "--older-than-hours", min=0, help="Only re-sign a CRL issued longer ago than this."
    ),
    ca_passphrase_env: str | None = typer.Option(
        None, "--ca-passphrase-env", help="Env var holding the CA key's passphrase."
    ),
) -> None:
    """Re-sign the CRL (same entries, next cRLNumber, fresh nextUpdate). Verifiers refuse a CRL
    past nextUpdate (+1 h grace), so the CA runs this on a schedule (cron, or --every)."""
    import datetime as dt
    import threading

    from trust.certificates import CertificateError
    from trust.pki import PkiError, crl_schedule, reissue_crl

    pw = _passphrase(ca_passphrase_env)
    after = dt.timedelta(hours=older_than_hours)
    try:
        if every is None:
            done = reissue_crl(ca_dir, ca_passphrase=pw, if_older_than=after or None)
            typer.echo("CRL re-issued" if done is not None else "CRL is recent; not re-issued")
            return
        typer.echo(f"re-issuing the CRL of {ca_dir} when older than {after} (every {every}s)")
        crl_schedule(ca_dir, threading.Event(), every=every, reissue_after=after, ca_passphrase=pw)
    except (PkiError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _revoked(ca_dir: Path) -> frozenset[str | int]:
    """The CA's revocation list; a missing, stale or rolled-back CRL stops the command."""
    from trust.certificates import CertificateError
    from trust.pki import revocation_list

    try:
        return revocation_list(ca_dir)
    except CertificateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@audit_app.command("verify")
def audit_verify_cmd(
    db: str | None = typer.Option(None, "--db", help="Database URL holding the ledger."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="A service's data folder."),
    service: str | None = typer.Option(
        None, "--service", help="With --data-dir: the service's database name (<dir>/<name>.db)."
    ),
    checkpoints: list[Path] = typer.Option(  # noqa: B006 - typer's list option
        [],
        "--checkpoints",
        help="Signed checkpoint file(s) (the operator's, a witness's copy); repeatable.",
    ),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="Regional CA (with --checkpoints)."),
    log_id: str | None = typer.Option(None, "--log", help="Only checkpoints of this log id."),
    operator: str | None = typer.Option(None, "--operator", help="Org that must have signed."),
    require_witness: bool = typer.Option(
        False, "--require-witness", help="Only trust checkpoints countersigned by another org."
    ),
) -> None:
    """Check a service's audit ledger; exit 1 naming the first edited/deleted/reordered entry,
    or — against signed checkpoints — a truncated or rewritten chain."""
    from trust.ledger_checkpoint import CheckpointError, check_against_checkpoints, read_checkpoints
    from trust.pki import load_ca_cert

    if checkpoints and ca_dir is None:
        typer.echo("error: --checkpoints needs --ca-dir (to check the signatures)", err=True)
        raise typer.Exit(2)
    engine, ledger = _open_ledger(db, data_dir, service)
    try:
        report = ledger.verify()
        chain = ledger.hashes() if report.ok and checkpoints else []
    finally:
        engine.dispose()
    if not report.ok:
        typer.echo(f"ledger broken: {report}")
        raise typer.Exit(1)
    if not checkpoints:
        typer.echo(str(report))
        return
    if ca_dir is None:
        typer.echo("error: --checkpoints needs --ca-dir", err=True)
        raise typer.Exit(2)
    try:
        found = [cp for path in checkpoints for cp in read_checkpoints(path)]
    except CheckpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    anchored = check_against_checkpoints(
        chain,
        found,
        log=log_id,
        ca_cert_pem=load_ca_cert(ca_dir),
        revoked=_revoked(ca_dir),
        operator=operator,
        require_witness=require_witness,
    )
    if not anchored.ok:
        typer.echo(f"ledger broken: {anchored.problem}")
        raise typer.Exit(1)
    witnessed = f", countersigned by {', '.join(anchored.witnesses)}" if anchored.witnesses else ""
    typer.echo(
        f"{report}; matches {anchored.checked} signed checkpoint(s) up to entry "
        f"{anchored.latest_seq}{witnessed}"
    )


@audit_app.command("checkpoint")
def audit_checkpoint_cmd(
    org_dir: Path = typer.Option(..., "--org-dir", help="The operator's credentials."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to append to."),
    log_id: str = typer.Option(..., "--log", help="Log id, e.g. ORG/coordinator."),
    db: str | None = typer.Option(None, "--db", help="Database URL holding the ledger."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="A service's data folder."),
    service: str | None = typer.Option(None, "--service", help="With --data-dir: db name."),
) -> None:
    """Sign the ledger's current head with the organisation's key and append it to --out."""
    from trust.ledger_checkpoint import append_checkpoint, sign_checkpoint
    from trust.pki import PkiError, load_org

    try:
        creds = load_org(org_dir)
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    engine, ledger = _open_ledger(db, data_dir, service)
    try:
        seq, head_hash = ledger.head()
    finally:
        engine.dispose()
    append_checkpoint(out, sign_checkpoint(creds, log_id, seq, head_hash))
    typer.echo(f"checkpoint of {log_id} at entry {seq} appended to {out}")


@audit_app.command("cosign")
def audit_cosign_cmd(
    checkpoints: Path = typer.Option(..., "--checkpoints", help="The operator's checkpoints."),
    org_dir: Path = typer.Option(..., "--org-dir", help="The witness's credentials."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Regional CA."),
    witness_file: Path = typer.Option(
        ..., "--witness-file", help="The witness's own copy (in its store, not the operator's)."
    ),
) -> None:
    """As a witness (another organisation): countersign the latest checkpoint of each log in
    --checkpoints, refusing a rollback or fork from what this witness cosigned before; the
    countersigned checkpoint is appended to the witness's file and to the operator's."""
    from trust.ledger_checkpoint import (
        Checkpoint,
        CheckpointError,
        append_checkpoint,
        cosign,
        read_checkpoints,
    )
    from trust.pki import PkiError, load_ca_cert, load_org

    try:
        witness = load_org(org_dir)
        offered = read_checkpoints(checkpoints)
        witnessed = read_checkpoints(witness_file)
    except (PkiError, CheckpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    latest: dict[str, Checkpoint] = {}
    for cp in offered:
        if cp.log not in latest or cp.seq >= latest[cp.log].seq:
            latest[cp.log] = cp
    if not latest:
        typer.echo("error: no checkpoint to countersign", err=True)
        raise typer.Exit(2)
    failed = False
    for cp in latest.values():
        try:
            signed = cosign(
                cp,
                witness,
                ca_cert_pem=load_ca_cert(ca_dir),
                witnessed=witnessed,
                revoked=_revoked(ca_dir),
            )
        except CheckpointError as exc:
            typer.echo(f"refused: {exc}")
            failed = True
            continue
        append_checkpoint(witness_file, signed)
        append_checkpoint(checkpoints, signed)
        typer.echo(f"countersigned {signed.log} at entry {signed.seq} as {witness.org_id}")
    if failed:
        raise typer.Exit(1)
