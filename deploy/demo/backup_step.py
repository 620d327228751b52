"""A story step of the nodes chapter: a node's database backup is sealed to its organisation's
encryption certificate (``ipjms backup seal``, deploy/backup_crypto.py) — no plaintext copy of
patient data is left on disk — opens with the organisation's key to the same bytes, and a
changed copy is refused."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import x25519

from deploy.backup_crypto import BackupCryptoError, open_stream, seal_stream
from deploy.demo.network import DemoNetwork, NodeInfo
from trust.certificates import load_certificate
from trust.pki import load_org

__all__ = ["run"]


def _snapshot(net: DemoNetwork, node: NodeInfo, scratch: Path) -> bytes:
    """A consistent online snapshot: ``pg_dump -Fc`` (``ipjms up``) or SQLite's backup API."""
    url = net.db_urls.get(f"node-{node.org_id}")
    if url:
        env = dict(os.environ)
        if env.get("IPJMS_DB_PASSWORD_FILE"):
            env["PGPASSWORD"] = Path(env["IPJMS_DB_PASSWORD_FILE"]).read_text().strip()
        done = subprocess.run(
            ["pg_dump", "-Fc", "-d", url.replace("postgresql+psycopg://", "postgresql://")],
            capture_output=True, timeout=300, env=env,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {done.stderr.decode(errors='replace')[-300:]}")
        return done.stdout
    copy = scratch / "node.db.snapshot"
    source = sqlite3.connect(node.data_dir / "node.db")
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    try:
        return copy.read_bytes()
    finally:
        copy.unlink()


def run(net: DemoNetwork, node: NodeInfo) -> None:
    with net.step(f"{node.org_id}'s database backup, sealed to its encryption key") as notes:
        org_dir = net.facts["pki"]["orgs"][node.org_id]
        public = load_certificate((org_dir / "encryption.cert.pem").read_bytes()).public_key()
        assert isinstance(public, x25519.X25519PublicKey)
        backups = net.service_dir("backups")
        plain = _snapshot(net, node, backups)
        sealed_path = backups / f"node-{node.org_id}.sealed"
        with open(sealed_path, "wb") as out:
            seal_stream(io.BytesIO(plain), out, public)
        sealed = sealed_path.read_bytes()
        opened = io.BytesIO()
        open_stream(io.BytesIO(sealed), opened, load_org(org_dir).encryption_key)
        if hashlib.sha256(opened.getvalue()).digest() != hashlib.sha256(plain).digest():
            raise RuntimeError("the opened backup differs from the snapshot")
        damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        try:
            open_stream(io.BytesIO(damaged), io.BytesIO(), load_org(org_dir).encryption_key)
        except BackupCryptoError:
            pass
        else:
            raise RuntimeError("a changed backup was opened")
        notes.append(
            f"{len(plain) / 1e6:.1f} MB snapshot → {sealed_path.name} (X25519 + AES-256-GCM), "
            "no plaintext copy kept; opens to the same bytes with the organisation's key"
        )
        notes.append("one flipped bit: refused whole (ipjms backup open exits 1, writes nothing)")
