"""The local region's CA (``ipjms demo``, ``ipjms up``): its key encrypted with a passphrase.

The passphrase is generated once per work dir and kept in ``<workdir>/pki/ca.passphrase``
(mode 0600) — **beside** the CA folder ``<workdir>/pki/ca/``, never inside it. Why a file and not
only an environment variable: a restarted ``ipjms up`` on the same work dir must sign again (the
CRL is re-signed on a schedule, verifiers refuse a stale one), so a passphrase that lived only in
a shell would strand the region's CA; and why beside the CA folder: the CA folder (what an
operator copies, backs up or moves to an offline machine) holds only ciphertext. It protects the
key against the CA folder leaking alone, not against someone who can read the whole work dir —
a local packaging; the Compose/Kubernetes paths take the passphrase from a secret store
(``IPJMS_CA_PASSPHRASE``). ``IPJMS_CA_PASSPHRASE_FILE`` names another file instead (it must exist).

Every signing the demo and ``ipjms up`` do goes through here (:func:`ensure_ca`,
:func:`issue`, :func:`ca_passphrase` for the CRL schedule); ``tests/deploy/test_deploy_demo_ca.py``
checks that no other demo/up module calls ``init_ca``/``issue_org`` itself.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from trust.pki import CA_KEY, OrgCredentials, PkiError, init_ca, issue_org

__all__ = ["PASSPHRASE_FILE", "PASSPHRASE_FILE_ENV", "ca_passphrase", "ensure_ca", "issue"]

PASSPHRASE_FILE = "ca.passphrase"  # noqa: S105 - a file name
PASSPHRASE_FILE_ENV = "IPJMS_CA_PASSPHRASE_FILE"  # noqa: S105 - an env var name


def passphrase_path(ca_dir: Path) -> Path:
    named = os.environ.get(PASSPHRASE_FILE_ENV)
    return Path(named) if named else Path(ca_dir).parent / PASSPHRASE_FILE


def ca_passphrase(ca_dir: Path | str) -> bytes:
    """The CA key's passphrase: read it, or create it (0600, 32 random bytes, URL-safe text)
    when neither the file nor a CA exists yet."""
    ca_dir = Path(ca_dir)
    path = passphrase_path(ca_dir)
    if path.exists():
        value = path.read_bytes().strip()
        if not value:
            raise PkiError(f"the CA passphrase file {path} is empty")
        return value
    if os.environ.get(PASSPHRASE_FILE_ENV):
        raise PkiError(f"{PASSPHRASE_FILE_ENV}={path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value + b"\n")
    return value


def _encrypt_plain_key(ca_dir: Path, passphrase: bytes) -> None:
    """A work dir made before the key was encrypted: encrypt its key in place (same key)."""
    key_path = ca_dir / CA_KEY
    pem = key_path.read_bytes()
    if b"ENCRYPTED" in pem:
        return
    key = serialization.load_pem_private_key(pem, password=None)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    tmp = key_path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, key_path)


def ensure_ca(ca_dir: Path | str, *, name: str) -> bytes:
    """Create the CA with an encrypted key if ``ca_dir`` has none; return the passphrase."""
    ca_dir = Path(ca_dir)
    passphrase = ca_passphrase(ca_dir)
    if (ca_dir / CA_KEY).exists():
        _encrypt_plain_key(ca_dir, passphrase)
    else:
        init_ca(ca_dir, name=name, passphrase=passphrase)
    return passphrase


def issue(
    ca_dir: Path | str, org_id: str, *, host: str, out_dir: Path | None = None
) -> OrgCredentials:
    """``trust.pki.issue_org`` signed with the work dir's CA passphrase."""
    return issue_org(
        ca_dir, org_id, host=host, out_dir=out_dir, ca_passphrase=ca_passphrase(ca_dir)
    )
