"""``ipjms backup seal|open``: encrypt a database dump to the organisation's encryption
certificate, and open it with the matching private key (format: deploy/backup_crypto.py).

    pg_dump -Fc -d "$URL" | ipjms backup seal --to orgs/org-x/encryption.cert.pem - node.dump.sealed
    ipjms backup open --key orgs/org-x/encryption.key.pem node.dump.sealed - | pg_restore -d …
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

backup_app = typer.Typer(no_args_is_help=True)

__all__ = ["backup_app"]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _streams(stack: ExitStack, src: str, dst: str) -> tuple[BinaryIO, BinaryIO]:
    inp = sys.stdin.buffer if src == "-" else stack.enter_context(open(src, "rb"))  # noqa: SIM115
    if dst == "-":
        return inp, sys.stdout.buffer
    out_path = Path(dst)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return inp, stack.enter_context(os.fdopen(fd, "wb"))


@backup_app.command("seal")
def seal(
    to: Annotated[
        Path, typer.Option("--to", help="The organisation's encryption.cert.pem (public).")
    ],
    src: Annotated[str, typer.Argument(help="The dump to encrypt ('-': standard input).")],
    dst: Annotated[str, typer.Argument(help="Where the sealed backup goes ('-': stdout).")],
) -> None:
    """Encrypt a dump so only the organisation's encryption key can open it."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    from deploy.backup_crypto import seal_stream
    from trust.certificates import load_certificate

    if not to.is_file():
        raise _fail(f"--to {to}: no such certificate")
    try:
        public = load_certificate(to.read_bytes()).public_key()
    except ValueError as exc:
        raise _fail(f"--to {to}: not a certificate ({exc})") from None
    if not isinstance(public, x25519.X25519PublicKey):
        raise _fail(f"--to {to}: not an encryption (X25519) certificate")
    with ExitStack() as stack:
        inp, out = _streams(stack, src, dst)
        size = seal_stream(inp, out, public)
    typer.echo(f"sealed {size} bytes to {to.name}", err=True)


@backup_app.command("open")
def open_cmd(
    key: Annotated[
        Path, typer.Option("--key", help="The organisation's encryption.key.pem (private).")
    ],
    src: Annotated[str, typer.Argument(help="The sealed backup ('-': standard input).")],
    dst: Annotated[str, typer.Argument(help="Where the dump goes ('-': standard output).")],
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the key's passphrase, if it has one."),
    ] = None,
) -> None:
    """Decrypt a sealed backup (refused whole if it was changed, truncated or is for another
    key; nothing is written to a file then)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    from deploy.backup_crypto import BackupCryptoError, open_stream

    if not key.is_file():
        raise _fail(f"--key {key}: no such file")
    password = None
    if passphrase_env:
        if not os.environ.get(passphrase_env):
            raise _fail(f"environment variable {passphrase_env} is not set or empty")
        password = os.environ[passphrase_env].encode()
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=password)
    except (ValueError, TypeError) as exc:
        raise _fail(f"--key {key}: cannot load ({exc})") from None
    if not isinstance(private, x25519.X25519PrivateKey):
        raise _fail(f"--key {key}: not an encryption (X25519) key")
    partial = Path(dst + ".partial") if dst != "-" else None
    try:
        with ExitStack() as stack:
            inp, out = _streams(stack, src, str(partial) if partial else "-")
            size = open_stream(inp, out, private)
    except BackupCryptoError as exc:
        if partial:
            partial.unlink(missing_ok=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if partial:
        partial.replace(dst)
    typer.echo(f"opened {size} bytes", err=True)
