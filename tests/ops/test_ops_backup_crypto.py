"""Sealed backups (deploy/backup_crypto.py): a dump encrypted to an organisation's X25519
encryption key opens only with that key, and any change to the file is refused whole."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from deploy.backup_crypto import CHUNK, BackupCryptoError, open_stream, seal_stream
from deploy.launcher import ipjms_command


def _seal(data: bytes, public: x25519.X25519PublicKey) -> bytes:
    out = io.BytesIO()
    assert seal_stream(io.BytesIO(data), out, public) == len(data)
    return out.getvalue()


def _open(sealed: bytes, key: x25519.X25519PrivateKey) -> bytes:
    out = io.BytesIO()
    open_stream(io.BytesIO(sealed), out, key)
    return out.getvalue()


@pytest.fixture(scope="module")
def key() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 7])
def test_round_trip_at_chunk_boundaries(size: int, key: x25519.X25519PrivateKey) -> None:
    data = os.urandom(size)
    sealed = _seal(data, key.public_key())
    assert size < 16 or data[:64] not in sealed  # a few random bytes may occur by chance
    assert _open(sealed, key) == data


def _chunks(sealed: bytes) -> tuple[bytes, list[bytes]]:
    header, rest, parts = sealed[:40], sealed[40:], []
    while rest:
        n = int.from_bytes(rest[:4], "big")
        parts.append(rest[: 4 + n])
        rest = rest[4 + n :]
    return header, parts


def _truncate(sealed: bytes) -> bytes:
    header, parts = _chunks(sealed)
    return header + b"".join(parts[:-1])


def _reorder(sealed: bytes) -> bytes:
    header, parts = _chunks(sealed)
    return header + parts[1] + parts[0] + b"".join(parts[2:])


def _flip(sealed: bytes) -> bytes:
    return sealed[:100] + bytes([sealed[100] ^ 1]) + sealed[101:]


def _append(sealed: bytes) -> bytes:
    return sealed + b"x"


@pytest.mark.parametrize("damage", [_truncate, _reorder, _flip, _append])
def test_a_changed_backup_is_refused(damage, key: x25519.X25519PrivateKey) -> None:  # type: ignore[no-untyped-def]
    sealed = _seal(os.urandom(2 * CHUNK + 5), key.public_key())
    with pytest.raises(BackupCryptoError):
        _open(damage(sealed), key)


def test_another_key_cannot_open_it(key: x25519.X25519PrivateKey) -> None:
    sealed = _seal(b"patient data", key.public_key())
    with pytest.raises(BackupCryptoError, match="wrong key"):
        _open(sealed, x25519.X25519PrivateKey.generate())
    with pytest.raises(BackupCryptoError, match="not an IPJMS"):
        _open(b"PGDMP" + sealed, key)


def test_cli_seals_to_the_certificate_and_opens_with_the_key(tmp_path: Path) -> None:
    from trust.pki import init_ca, issue_org

    init_ca(tmp_path / "ca")
    issue_org(tmp_path / "ca", "org-b", host="127.0.0.1")
    org = tmp_path / "ca" / "orgs" / "org-b"
    dump = tmp_path / "db.dump"
    dump.write_bytes(b"PGDMP" + os.urandom(3000))

    def ipjms(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(ipjms_command("backup", *args), capture_output=True, timeout=60)

    cert, key_file = org / "encryption.cert.pem", org / "encryption.key.pem"
    assert ipjms("seal", "--to", str(cert), str(dump), str(tmp_path / "s")).returncode == 0
    assert (tmp_path / "s").stat().st_mode & 0o077 == 0  # owner-only, like the dump's secrets
    assert b"PGDMP" not in (tmp_path / "s").read_bytes()
    assert (
        ipjms("open", "--key", str(key_file), str(tmp_path / "s"), "-").stdout == dump.read_bytes()
    )
    # refused: the TLS certificate (not an encryption key) and a damaged file (nothing written)
    done = ipjms("seal", "--to", str(org / "tls.cert.pem"), str(dump), str(tmp_path / "x"))
    assert done.returncode == 2 and b"not an encryption" in done.stderr
    (tmp_path / "bad").write_bytes(_flip((tmp_path / "s").read_bytes()))
    done = ipjms("open", "--key", str(key_file), str(tmp_path / "bad"), str(tmp_path / "out"))
    assert done.returncode == 1 and b"cannot open the backup" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
