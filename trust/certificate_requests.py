"""Organisations make their own keys; the authority's CA signs their certificate requests.

The regional authority never generates, sees or holds an organisation's private keys:

1. the organisation (``ipjms pki request ORG_DIR --org ORG --host H``) generates its TLS (EC P-256),
   signing (EC P-384) and encryption (X25519) keys under ``ORG_DIR/pending/`` and writes
   ``pending/request.pem`` — two PKCS#10 requests, each signed by its own key (proof of
   possession); the signing request also carries the X25519 public key in an extension, so the
   organisation's signing key vouches for its encryption key (an X25519 key cannot sign);
2. it sends ``request.pem`` (public material only) to the authority, which checks it and signs it
   (``ipjms pki sign-request CA_DIR REQUEST --org ORG --host H --out DIR``): the operator names
   the organisation *and* the hosts it identified out of band, and a request whose TLS hosts
   differ is refused — the hosts in a request are the organisation's claim, never trusted
   alone (the node's OPRF client and the registry's JWKS fetch trust this CA by host name);
   three certificates and the CA certificate in ``DIR``, recorded under ``issued/`` like any
   issuance;
3. the organisation installs them (``ipjms pki accept ORG_DIR DIR``): each certificate must carry
   the public key of its pending key and chain to the CA; the current credentials move to
   ``previous/<n>/`` (a rotation) and the pending keys become current.

The organisation directory it produces is the one ``trust.pki.load_org`` reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from trust.certificates import ORG_DNS_SUFFIX, check_org_id, fingerprint, load_certificate
from trust.pki import (
    CA_CERT,
    ISSUED,
    PkiError,
    _archive,
    _cert_pem,
    _issue_cert,
    _key_pem,
    _load_ca,
    _write,
    revoked_orgs,
)

__all__ = [
    "CertificateRequest",
    "make_request",
    "read_request",
    "check_hosts",
    "sign_request",
    "accept",
]

PENDING, REQUEST = "pending", "request.pem"
_OU = NameOID.ORGANIZATIONAL_UNIT_NAME
USAGES = ("tls", "signing", "encryption")
# The X25519 public key inside the signing request: an OID under 2.25 (a UUID turned into an
# OID, ITU-T X.667 — no registration needed), uuid 6f0c1f1e-5a0b-4c7e-9a53-1f2d0b6c9e41.
ENCRYPTION_KEY_OID = x509.ObjectIdentifier("2.25.147712034009366930389484089599006150209")


@dataclass(frozen=True)
class CertificateRequest:
    """A checked request: the organisation, its requested TLS hosts and three public keys."""

    org_id: str
    hosts: tuple[str, ...]
    tls_key: ec.EllipticCurvePublicKey
    signing_key: ec.EllipticCurvePublicKey
    encryption_key: x25519.X25519PublicKey


def _subject(org_id: str, usage: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, usage),
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
        ]
    )


def _hosts(host: str | Sequence[str]) -> list[str]:
    hosts = [h.strip() for h in (host.split(",") if isinstance(host, str) else host) if h.strip()]
    if not hosts:
        raise PkiError("at least one host is needed for the TLS certificate")
    wild = [h for h in hosts if "*" in h]
    if wild:
        raise PkiError(f"wildcard hosts are never certified: {', '.join(wild)}")
    if any(h.lower().endswith(ORG_DNS_SUFFIX) for h in hosts):
        raise PkiError(f"a host may not end in {ORG_DNS_SUFFIX} (it names an organisation)")
    return hosts


def _host_key(host: str) -> str:
    """A host as compared with the operator's list: DNS names case-insensitive, IPs canonical."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


def check_hosts(requested: Sequence[str], expected: str | Sequence[str]) -> None:
    """Refuse unless the requested TLS hosts are exactly the ones the CA operator expects,
    naming the extra and the missing ones."""
    want = {_host_key(h) for h in _hosts(expected)}
    got = {_host_key(h) for h in requested}
    extra, missing = sorted(got - want), sorted(want - got)
    if extra or missing:
        parts = [f"extra {', '.join(extra)}"] if extra else []
        parts += [f"missing {', '.join(missing)}"] if missing else []
        raise PkiError(
            "the request's TLS hosts differ from the hosts the operator expects "
            f"({'; '.join(parts)}): nothing issued"
        )


def _host_names(hosts: list[str]) -> list[x509.GeneralName]:
    import ipaddress

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


# --- the organisation's side --------------------------------------------------------------------


def make_request(
    org_dir: Path | str,
    org_id: str,
    *,
    host: str | Sequence[str],
    passphrase: bytes | None = None,
) -> Path:
    """Generate the organisation's three keys under ``org_dir/pending/`` (0600, encrypted with
    ``passphrase`` if given) and write the request to send; returns the request's path. A
    pending request is kept, never overwritten: accept it or remove ``pending/`` first."""
    check_org_id(org_id)
    hosts = _hosts(host)
    pending = Path(org_dir) / PENDING
    if (pending / REQUEST).exists():
        raise PkiError(f"{pending / REQUEST} is already pending: accept it or remove {pending}")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    sign_key = ec.generate_private_key(ec.SECP384R1())
    enc_key = x25519.X25519PrivateKey.generate()
    enc_raw = enc_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    tls_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(org_id, "tls"))
        .add_extension(x509.SubjectAlternativeName(_host_names(hosts)), critical=False)
        .sign(tls_key, hashes.SHA256())
    )
    sign_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(org_id, "signing"))
        .add_extension(x509.UnrecognizedExtension(ENCRYPTION_KEY_OID, enc_raw), critical=False)
        .sign(sign_key, hashes.SHA384())
    )
    for usage, key in (("tls", tls_key), ("signing", sign_key), ("encryption", enc_key)):
        _write(pending / f"{usage}.key.pem", _key_pem(key, passphrase), private=True)
    meta = {"org_id": org_id, "hosts": hosts, "encrypted_keys": bool(passphrase)}
    _write(pending / "request.json", json.dumps(meta, indent=2).encode())
    pem = tls_csr.public_bytes(serialization.Encoding.PEM)
    pem += sign_csr.public_bytes(serialization.Encoding.PEM)
    _write(pending / REQUEST, pem)
    return pending / REQUEST


def accept(org_dir: Path | str, issued_dir: Path | str) -> Path:
    """Install the certificates the CA returned for the pending request. Each must carry the
    public key of its pending key, name the organisation and be signed by the CA certificate
    that came with them; then the current credentials (if any) move to ``previous/<n>/``."""
    org_dir, issued_dir = Path(org_dir), Path(issued_dir)
    pending = org_dir / PENDING
    if not (pending / REQUEST).exists():
        raise PkiError(f"no pending request in {org_dir} (run `ipjms pki request` first)")
    request = read_request((pending / REQUEST).read_bytes())
    meta = json.loads((pending / "request.json").read_text())
    ca_pem = _read(issued_dir / CA_CERT)
    ca_cert = load_certificate(ca_pem)
    expected = {
        "tls": request.tls_key,
        "signing": request.signing_key,
        "encryption": request.encryption_key,
    }
    certs: dict[str, x509.Certificate] = {}
    for usage in USAGES:
        cert = load_certificate(_read(issued_dir / f"{usage}.cert.pem"))
        if cert.public_key() != expected[usage]:
            raise PkiError(f"{usage}.cert.pem is not for this organisation's pending {usage} key")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError(f"{usage}.cert.pem is not signed by the CA in {CA_CERT}") from None
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [a.value for a in cn] != [request.org_id]:
            raise PkiError(f"{usage}.cert.pem names another organisation")
        certs[usage] = cert
    if (org_dir / "org.json").exists():
        _archive(org_dir)
    for usage in USAGES:
        os.replace(pending / f"{usage}.key.pem", org_dir / f"{usage}.key.pem")
        _write(org_dir / f"{usage}.cert.pem", _cert_pem(certs[usage]))
    _write(org_dir / CA_CERT, ca_pem)
    record = {
        "org_id": request.org_id,
        "hosts": list(request.hosts),
        "encrypted_keys": bool(meta.get("encrypted_keys")),
        "issued_at": certs["tls"].not_valid_before_utc.isoformat(),
        "serials": {u: f"{c.serial_number:x}" for u, c in certs.items()},
        "fingerprints": {u: fingerprint(c) for u, c in certs.items()},
        "not_after": certs["tls"].not_valid_after_utc.isoformat(),
    }
    _write(org_dir / "org.json", json.dumps(record, indent=2).encode())
    shutil.rmtree(pending)
    return org_dir


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"missing {path}") from None


# --- the authority's side -----------------------------------------------------------------------


def read_request(pem: bytes) -> CertificateRequest:
    """Parse and check a request: two PKCS#10 requests with valid self-signatures (proof of
    possession), subjects naming one organisation with usages tls and signing, the right key
    types, and the X25519 key in the signing request."""
    blocks = [b for b in pem.split(b"-----END CERTIFICATE REQUEST-----") if b.strip()]
    try:
        csrs = [x509.load_pem_x509_csr(b + b"-----END CERTIFICATE REQUEST-----\n") for b in blocks]
    except ValueError as exc:
        raise PkiError(f"not a certificate request: {exc}") from None
    by_usage: dict[str, x509.CertificateSigningRequest] = {}
    orgs: set[str] = set()
    for csr in csrs:
        if not csr.is_signature_valid:
            raise PkiError("a request's signature does not verify (no proof of its key)")
        ou = [str(a.value) for a in csr.subject.get_attributes_for_oid(_OU)]
        cn = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if len(ou) != 1 or ou[0] not in ("tls", "signing") or ou[0] in by_usage or len(cn) != 1:
            raise PkiError("the request must hold exactly one tls and one signing request")
        by_usage[ou[0]] = csr
        orgs.add(cn[0])
    if set(by_usage) != {"tls", "signing"} or len(orgs) != 1:
        raise PkiError("the request must hold one tls and one signing request of one organisation")
    (org_id,) = orgs
    check_org_id(org_id)
    tls_key, sign_key = by_usage["tls"].public_key(), by_usage["signing"].public_key()
    if not (isinstance(tls_key, ec.EllipticCurvePublicKey) and tls_key.curve.name == "secp256r1"):
        raise PkiError("the TLS key must be EC P-256")
    if not (isinstance(sign_key, ec.EllipticCurvePublicKey) and sign_key.curve.name == "secp384r1"):
        raise PkiError("the signing key must be EC P-384")
    try:
        raw = by_usage["signing"].extensions.get_extension_for_oid(ENCRYPTION_KEY_OID).value
        enc_key = x25519.X25519PublicKey.from_public_bytes(raw.value)  # type: ignore[attr-defined]
    except (x509.ExtensionNotFound, ValueError):
        raise PkiError("the signing request carries no X25519 encryption key") from None
    try:
        san = by_usage["tls"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError("the TLS request names no host") from None
    if san.get_values_for_type(x509.UniformResourceIdentifier):
        raise PkiError("the TLS request may not name URIs (the CA adds the organisation's own)")
    hosts = [*san.get_values_for_type(x509.DNSName)]
    hosts += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return CertificateRequest(org_id, tuple(_hosts(hosts)), tls_key, sign_key, enc_key)


def sign_request(
    ca_dir: Path | str,
    request_pem: bytes,
    *,
    org_id: str,
    hosts: str | Sequence[str],
    out_dir: Path | str,
    days: int = 365,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> CertificateRequest:
    """Check a request for ``org_id`` and ``hosts`` (the organisation and its TLS host names,
    as the CA operator identified them out of band) and write its three certificates and the CA
    certificate to ``out_dir``. The request's TLS hosts must be exactly ``hosts``: an extra or a
    missing one is refused, whatever the organisation asks. No private key of the organisation
    is involved; nothing is written when the request is refused."""
    ca_dir = Path(ca_dir)
    request = read_request(request_pem)
    if request.org_id != org_id:
        raise PkiError(f"the request is for {request.org_id}, not {org_id}")
    check_hosts(request.hosts, hosts)
    if org_id in revoked_orgs(ca_dir):
        raise PkiError(f"organisation {org_id} has been revoked")
    ca_key, ca_cert = _load_ca(ca_dir, ca_passphrase)
    now = now or dt.datetime.now(dt.UTC)
    keys: dict[str, ec.EllipticCurvePublicKey | x25519.X25519PublicKey] = {
        "tls": request.tls_key,
        "signing": request.signing_key,
        "encryption": request.encryption_key,
    }
    certs = {
        usage: _issue_cert(
            ca_key, ca_cert, org_id, pub, hosts=request.hosts, usage=usage, now=now, days=days
        )
        for usage, pub in keys.items()
    }
    out = Path(out_dir)
    for usage, cert in certs.items():
        _write(ca_dir / ISSUED / f"{cert.serial_number:x}.pem", _cert_pem(cert))
        _write(out / f"{usage}.cert.pem", _cert_pem(cert))
    _write(out / CA_CERT, _cert_pem(ca_cert))
    return request
