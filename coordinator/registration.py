"""How the authority registers organisations: from an organisation's credentials folder (public
certificates only — no private key is read) or from a TOML file listing several."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from coordinator.directory import OrgRecord
from trust.certificates import fingerprint, load_certificate, org_id_of

__all__ = ["record_from_credentials", "records_from_toml"]


def record_from_credentials(
    org_dir: Path, *, name: str, level: str, endpoints: list[dict[str, str]] | None = None
) -> OrgRecord:
    """An ``OrgRecord`` from ``ipjms pki issue`` output: tls/signing/encryption certificates."""
    tls = (org_dir / "tls.cert.pem").read_bytes()
    org_id = org_id_of(load_certificate(tls))
    meta_path = org_dir / "org.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("org_id") != org_id:
        raise ValueError(
            f"{org_dir}: org.json and the TLS certificate name different organisations"
        )
    return OrgRecord(
        org_id=org_id,
        name=name,
        level=level,
        endpoints=endpoints or [],
        encryption_certificate=(org_dir / "encryption.cert.pem").read_bytes(),
        signing_certificate=(org_dir / "signing.cert.pem").read_bytes(),
        cert_fingerprints=[fingerprint(load_certificate(tls))],
    )


def records_from_toml(path: Path) -> list[OrgRecord]:
    """``[[organisation]]`` tables with ``credentials`` (folder, relative to the file), ``name``,
    ``level`` and optional ``endpoints = [{kind = "fhir", url = "…"}]``."""
    data = tomllib.loads(path.read_text())
    records = []
    for entry in data.get("organisation", []):
        folder = Path(entry["credentials"])
        if not folder.is_absolute():
            folder = path.parent / folder
        records.append(
            record_from_credentials(
                folder,
                name=entry["name"],
                level=entry["level"],
                endpoints=list(entry.get("endpoints", [])),
            )
        )
    return records
