"""The regional PKI on disk: the authority's CA, organisation credentials, revocation.

CA directory (``ipjms pki init-ca DIR``)::

    ca.key.pem        CA private key (EC P-384), 0600, optionally passphrase-protected
    ca.cert.pem       self-signed CA certificate (basicConstraints CA, keyCertSign + cRLSign)
    ca.crl.pem        the CA-signed CRL (re-issued on every revocation)
    issued/<serial>.pem  every certificate the CA issued (serial in hex) — the revocation index
    orgs/<org_id>/    default output folder of ``ipjms pki issue``

Organisation directory (``ipjms pki issue DIR --org ORG``)::

    org.json                       org id, hosts, serials, fingerprints, keys encrypted?
    ca.cert.pem                    the regional CA certificate (trust anchor)
    tls.cert.pem / tls.key.pem     mutual-TLS certificate (EC P-256, EKU serverAuth+clientAuth)
    signing.cert.pem / .key.pem    signing key (EC P-384 → ES384 JWTs, ECDSA envelope signatures)
    encryption.cert.pem / .key.pem X25519 key envelopes are sealed to, bound by a CA certificate
    previous/<n>/                  material replaced by a rotation (opens in-flight envelopes)

Private keys are created 0600. See trust/README.md for the rotation and revocation procedure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trust.certificates import (
    ORG_URN_PREFIX,
    CertificateError,
    check_org_id,
    crl_revoked_serials,
    fingerprint,
    load_certificate,
    org_dns_name,
    org_id_of,
    verify_peer_certificate,
)

__all__ = [
    "PkiError",
    "CertificateError",
    "OrgCredentials",
    "init_ca",
    "issue_org",
    "load_org",
    "SigningIdentity",
    "load_signing_identity",
    "revoke",
    "revoked_orgs",
    "revoked_serials",
    "revocation_list",
    "load_crl",
    "load_ca_cert",
    "runtime_passphrase",
    "reissue_crl",
    "crl_schedule",
    "CRL_GRACE",
    "verify_peer_certificate",
]

CA_KEY, CA_CERT, CA_CRL, ISSUED = "ca.key.pem", "ca.cert.pem", "ca.crl.pem", "issued"
_SKEW = dt.timedelta(minutes=5)  # back-date notBefore a little so peers with slow clocks agree
_CRL_VALIDITY = dt.timedelta(days=7)


class PkiError(Exception):
    """A PKI operation could not be done (missing CA, wrong passphrase, revoked organisation)."""


@dataclass(frozen=True)
class OrgCredentials:
    org_id: str
    ca_cert_pem: bytes
    tls_cert_pem: bytes
    tls_key_pem: bytes  # unencrypted PKCS#8 in memory (gRPC wants it so)
    signing_cert_pem: bytes
    signing_key: ec.EllipticCurvePrivateKey
    encryption_cert_pem: bytes
    encryption_key: x25519.X25519PrivateKey
    previous_encryption_keys: tuple[x25519.X25519PrivateKey, ...] = ()

    @property
    def signing_public_key(self) -> ec.EllipticCurvePublicKey:
        return self.signing_key.public_key()

    @property
    def encryption_public_key(self) -> x25519.X25519PublicKey:
        return self.encryption_key.public_key()

    @property
    def signing_algorithm(self) -> str:
        return "ES384" if self.signing_key.curve.name == "secp384r1" else "ES256"

    @property
    def tls_fingerprint(self) -> str:
        return fingerprint(load_certificate(self.tls_cert_pem))

    @property
    def signing_fingerprint(self) -> str:
        return fingerprint(load_certificate(self.signing_cert_pem))

    @property
    def encryption_fingerprint(self) -> str:
        return fingerprint(load_certificate(self.encryption_cert_pem))


@dataclass(frozen=True)
class SigningIdentity:
    """The part of an organisation's credentials a process that only signs needs (a SuperNode:
    SuperNode authentication and consent assertions): no TLS or encryption private key, so
    those files need not be mounted into it (:func:`load_signing_identity`)."""

    org_id: str
    ca_cert_pem: bytes
    signing_cert_pem: bytes
    signing_key: ec.EllipticCurvePrivateKey

    @property
    def signing_public_key(self) -> ec.EllipticCurvePublicKey:
        return self.signing_key.public_key()

    @property
    def signing_algorithm(self) -> str:
        return "ES384" if self.signing_key.curve.name == "secp384r1" else "ES256"

    @property
    def signing_fingerprint(self) -> str:
        return fingerprint(load_certificate(self.signing_cert_pem))


# --- file helpers -----------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey, pw: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _load_key(path: Path, pw: bytes | None):  # type: ignore[no-untyped-def]
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=pw)
    except FileNotFoundError:
        raise PkiError(f"missing key file {path}") from None
    except (TypeError, ValueError) as exc:
        raise PkiError(f"cannot load {path.name}: wrong or missing passphrase? ({exc})") from None


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the CA -----------------------------------------------------------------------------------


def init_ca(
    ca_dir: Path | str,
    *,
    name: str = "IPJMS Regional CA",
    passphrase: bytes | None = None,
    days: int = 3650,
    now: dt.datetime | None = None,
) -> None:
    """Create the authority's CA (EC P-384, self-signed) and an empty CRL in ``ca_dir``."""
    ca_dir = Path(ca_dir)
    if (ca_dir / CA_KEY).exists():
        raise PkiError(f"{ca_dir} already holds a CA")
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IPJMS Regional Health Authority"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    _write(ca_dir / CA_KEY, _key_pem(key, passphrase), private=True)
    _write(ca_dir / CA_CERT, _cert_pem(cert))
    (ca_dir / ISSUED).mkdir(parents=True, exist_ok=True)
    _write_crl(ca_dir, key, cert, [], now)


def load_ca_cert(ca_dir: Path | str) -> bytes:
    path = Path(ca_dir) / CA_CERT
    if not path.exists():
        raise PkiError(f"no CA in {ca_dir} (run `ipjms pki init-ca {ca_dir}`)")
    return path.read_bytes()


def _load_ca(
    ca_dir: Path, passphrase: bytes | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert = load_certificate(load_ca_cert(ca_dir))
    key = _load_key(ca_dir / CA_KEY, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an EC key")
    return key, cert


def _key_usage(*, signature: bool = False, commitment: bool = False, agreement: bool = False):  # type: ignore[no-untyped-def]
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agreement,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _san(org_id: str, hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(ORG_URN_PREFIX + org_id),
        x509.DNSName(org_dns_name(org_id)),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _issue_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    org_id: str,
    public_key: ec.EllipticCurvePublicKey | x25519.X25519PublicKey,
    *,
    hosts: Sequence[str],
    usage: str,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, usage),
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(org_id, hosts if usage == "tls" else ()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if usage == "tls":
        builder = builder.add_extension(_key_usage(signature=True), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    elif usage == "signing":
        builder = builder.add_extension(_key_usage(signature=True, commitment=True), critical=True)
    else:
        builder = builder.add_extension(_key_usage(agreement=True), critical=True)
    return builder.sign(ca_key, hashes.SHA384())


def issue_org(
    ca_dir: Path | str,
    org_id: str,
    *,
    host: str | Sequence[str] = "127.0.0.1",
    out_dir: Path | str | None = None,
    days: int = 365,
    passphrase: bytes | None = None,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> OrgCredentials:
    """Both sides of an issuance on one machine (the local demo, tests): the organisation's
    request in ``out_dir`` (its keys are made there), the CA's signature, the organisation's
    acceptance — the same steps as ``ipjms pki request|sign-request|accept``
    (``trust.certificate_requests``), where the CA never sees a private key.

    Issuing again for the same organisation is a *rotation*: the new credentials replace the
    files (the old ones move to ``previous/<n>/``) while the old certificates stay valid until
    they expire or are revoked by serial.
    """
    import tempfile

    from trust.certificate_requests import accept, make_request, sign_request

    ca_dir = Path(ca_dir)
    check_org_id(org_id)
    hosts = [h.strip() for h in (host.split(",") if isinstance(host, str) else host) if h.strip()]
    if org_id in revoked_orgs(ca_dir):
        raise PkiError(f"organisation {org_id} has been revoked")
    _load_ca(ca_dir, ca_passphrase)  # a wrong CA passphrase fails before any key is made
    out = Path(out_dir) if out_dir is not None else ca_dir / "orgs" / org_id
    request = make_request(out, org_id, host=hosts, passphrase=passphrase)
    try:
        with tempfile.TemporaryDirectory() as issued:
            sign_request(
                ca_dir,
                request.read_bytes(),
                org_id=org_id,
                hosts=hosts,
                out_dir=issued,
                days=days,
                ca_passphrase=ca_passphrase,
                now=now,
            )
            accept(out, issued)
    finally:
        shutil.rmtree(request.parent, ignore_errors=True)
    return load_org(out, passphrase=passphrase)


def _archive(out: Path) -> None:
    previous = out / "previous"
    previous.mkdir(exist_ok=True)
    n = 1 + max((int(p.name) for p in previous.iterdir() if p.name.isdigit()), default=0)
    target = previous / str(n)
    target.mkdir()
    for name in ["org.json"] + [
        f"{u}.{k}.pem" for u in ("tls", "signing", "encryption") for k in ("key", "cert")
    ]:
        if (out / name).exists():
            shutil.copy2(out / name, target / name)


PASSPHRASE_ENV, PASSPHRASE_FILE_ENV = "IPJMS_KEY_PASSPHRASE", "IPJMS_KEY_PASSPHRASE_FILE"


def runtime_passphrase() -> bytes | None:
    """The passphrase a service runs with: the file named by ``IPJMS_KEY_PASSPHRASE_FILE`` (a
    mounted secret; trailing newline dropped) or ``IPJMS_KEY_PASSPHRASE``; None if neither."""
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    if path:
        try:
            return Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise PkiError(f"cannot read the key passphrase file {path}: {exc}") from None
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def load_org(org_dir: Path | str, *, passphrase: bytes | None = None) -> OrgCredentials:
    """Load an organisation's credentials (and earlier encryption keys kept by rotations).

    Passphrase-protected keys (``org.json`` ``encrypted_keys``) are opened with ``passphrase``
    or, when none is given, with :func:`runtime_passphrase` — the path every service takes."""
    org_dir = Path(org_dir)
    meta_path = org_dir / "org.json"
    if not meta_path.exists():
        raise PkiError(f"no organisation credentials in {org_dir}")
    meta = json.loads(meta_path.read_text())
    if passphrase is None and meta.get("encrypted_keys"):
        passphrase = runtime_passphrase()
        if passphrase is None:
            raise PkiError(
                f"the keys in {org_dir} are passphrase-protected: set {PASSPHRASE_FILE_ENV} "
                f"(a file holding the passphrase) or {PASSPHRASE_ENV}"
            )
    tls_key = _load_key(org_dir / "tls.key.pem", passphrase)
    sign_key = _load_key(org_dir / "signing.key.pem", passphrase)
    enc_key = _load_key(org_dir / "encryption.key.pem", passphrase)
    if not isinstance(sign_key, ec.EllipticCurvePrivateKey) or not isinstance(
        enc_key, x25519.X25519PrivateKey
    ):
        raise PkiError(f"{org_dir} holds keys of unexpected types")
    tls_cert = (org_dir / "tls.cert.pem").read_bytes()
    if org_id_of(load_certificate(tls_cert)) != meta["org_id"]:
        raise PkiError(f"{org_dir}: certificate and org.json name different organisations")
    previous: list[x25519.X25519PrivateKey] = []
    prev_root = org_dir / "previous"
    if prev_root.is_dir():
        for sub in sorted(
            (p for p in prev_root.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name)
        ):
            old = _load_key(sub / "encryption.key.pem", passphrase)
            if isinstance(old, x25519.X25519PrivateKey):
                previous.append(old)
    return OrgCredentials(
        org_id=meta["org_id"],
        ca_cert_pem=(org_dir / CA_CERT).read_bytes(),
        tls_cert_pem=tls_cert,
        tls_key_pem=_key_pem(tls_key, None),
        signing_cert_pem=(org_dir / "signing.cert.pem").read_bytes(),
        signing_key=sign_key,
        encryption_cert_pem=(org_dir / "encryption.cert.pem").read_bytes(),
        encryption_key=enc_key,
        previous_encryption_keys=tuple(previous),
    )


def load_signing_identity(
    org_dir: Path | str, *, passphrase: bytes | None = None
) -> SigningIdentity:
    """Load only org.json, the CA certificate and the signing certificate and key: what a
    process that signs as its organisation reads (nothing else need be mounted)."""
    org_dir = Path(org_dir)
    meta_path = org_dir / "org.json"
    if not meta_path.exists():
        raise PkiError(f"no organisation credentials in {org_dir}")
    meta = json.loads(meta_path.read_text())
    sign_key = _load_key(org_dir / "signing.key.pem", passphrase)
    if not isinstance(sign_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{org_dir} holds a signing key of an unexpected type")
    signing_cert = (org_dir / "signing.cert.pem").read_bytes()
    if org_id_of(load_certificate(signing_cert)) != meta["org_id"]:
        raise PkiError(f"{org_dir}: certificate and org.json name different organisations")
    return SigningIdentity(
        org_id=meta["org_id"],
        ca_cert_pem=(org_dir / CA_CERT).read_bytes(),
        signing_cert_pem=signing_cert,
        signing_key=sign_key,
    )


# --- revocation -------------------------------------------------------------------------------


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _write_crl(
    ca_dir: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    entries: Sequence[x509.RevokedCertificate],
    now: dt.datetime,
    *,
    previous: x509.CertificateRevocationList | None = None,
) -> x509.CertificateRevocationList:
    """Sign and write the CRL: numbered one above ``previous`` (RFC 5280 cRLNumber, what
    verifiers refuse to go back from), valid until ``now`` + 7 days."""
    number = _crl_number(previous) + 1 if previous is not None else 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _SKEW)
        .next_update(now + _CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA384())
    _write(ca_dir / CA_CRL, crl.public_bytes(serialization.Encoding.PEM))
    return crl


def load_crl(ca_dir: Path | str) -> x509.CertificateRevocationList:
    """The CA's CRL, after checking the CA signed it (no CRL / not a CRL → error)."""
    path = Path(ca_dir) / CA_CRL
    if not path.exists():
        raise PkiError(f"no CRL in {ca_dir}")
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise CertificateError(f"{path} is not a CRL: {exc}") from None
    crl_revoked_serials(crl, load_ca_cert(ca_dir))  # raises if not signed by the CA
    return crl


def reissue_crl(
    ca_dir: Path | str,
    *,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
    if_older_than: dt.timedelta | None = None,
) -> x509.CertificateRevocationList | None:
    """Re-sign the CRL with the same entries, the next number and a fresh ``nextUpdate`` — what
    the CA does on a schedule (``ipjms pki reissue-crl``), so verifiers, which refuse a CRL past
    its ``nextUpdate``, keep working. With ``if_older_than``, only a CRL issued longer ago than
    that is re-issued (returns None otherwise)."""
    ca_dir = Path(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    crl = load_crl(ca_dir)
    if if_older_than is not None and now - crl.last_update_utc - _SKEW < if_older_than:
        return None
    ca_key, ca_cert = _load_ca(ca_dir, ca_passphrase)
    return _write_crl(ca_dir, ca_key, ca_cert, list(crl), now, previous=crl)


def _issued(ca_dir: Path) -> dict[int, x509.Certificate]:
    folder = ca_dir / ISSUED
    if not folder.is_dir():
        return {}
    return {int(p.stem, 16): load_certificate(p.read_bytes()) for p in folder.glob("*.pem")}


def revoke(
    ca_dir: Path | str,
    org_id: str | None = None,
    *,
    serial: int | None = None,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> list[int]:
    """Revoke a whole organisation (every certificate it holds) or one certificate by serial.

    Returns the serials newly added to the CRL. Revoking an organisation also bars new
    certificates for it (``issue_org`` refuses).
    """
    if (org_id is None) == (serial is None):
        raise PkiError("revoke takes an organisation id or a serial, not both")
    ca_dir = Path(ca_dir)
    ca_key, ca_cert = _load_ca(ca_dir, ca_passphrase)
    now = now or dt.datetime.now(dt.UTC)
    crl = load_crl(ca_dir)
    already = {e.serial_number for e in crl}
    issued = _issued(ca_dir)
    if org_id is not None:
        check_org_id(org_id)
        targets = sorted(s for s, c in issued.items() if org_id_of(c) == org_id)
        if not targets:
            raise PkiError(f"the CA never issued a certificate to {org_id}")
        reason = x509.ReasonFlags.cessation_of_operation
    elif serial is not None:
        if serial not in issued:
            raise PkiError(f"the CA never issued serial {serial:x}")
        targets, reason = [serial], x509.ReasonFlags.superseded
    entries = list(crl)
    added = []
    for s in targets:
        if s in already:
            continue
        entries.append(
            x509.RevokedCertificateBuilder()
            .serial_number(s)
            .revocation_date(now)
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
        added.append(s)
    _write_crl(ca_dir, ca_key, ca_cert, entries, now, previous=crl)
    return added


def revoked_serials(ca_dir: Path | str) -> frozenset[int]:
    return frozenset(e.serial_number for e in load_crl(ca_dir))


def revoked_orgs(ca_dir: Path | str) -> frozenset[str]:
    """Organisations revoked as a whole (CRL entries with reason cessationOfOperation)."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_CRL).exists():
        return frozenset()
    issued = _issued(ca_dir)
    orgs = set()
    for entry in load_crl(ca_dir):
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            continue
        if reason == x509.ReasonFlags.cessation_of_operation and entry.serial_number in issued:
            orgs.add(org_id_of(issued[entry.serial_number]))
    return frozenset(orgs)


CRL_REISSUE_AFTER = dt.timedelta(days=1)  # the CA's schedule: a CRL older than this is re-signed


def crl_schedule(
    ca_dir: Path | str,
    stop: threading.Event,
    *,
    every: float = 3600.0,
    reissue_after: dt.timedelta = CRL_REISSUE_AFTER,
    ca_passphrase: bytes | None = None,
) -> None:
    """The CA's re-issue loop (``ipjms pki reissue-crl --every``; the demo runs it in a thread):
    every ``every`` seconds, re-sign the CRL if it is older than ``reissue_after`` — well inside
    its 7-day validity, so verifiers never see it go stale while the CA is up."""
    while True:
        reissue_crl(ca_dir, ca_passphrase=ca_passphrase, if_older_than=reissue_after)
        if stop.wait(every):
            return


CRL_GRACE = dt.timedelta(hours=1)  # how long past its nextUpdate a CRL is still believed


@dataclass(frozen=True)
class _Revocations:
    file: tuple[int, ...]
    revoked: frozenset[str | int]
    next_update: dt.datetime
    number: int


_REVOCATIONS: dict[Path, _Revocations] = {}
_HIGHEST_CRL: dict[Path, int] = {}  # the highest CRL number this process has accepted, per CA
_REVOCATIONS_LOCK = threading.Lock()


def _crl_signature(ca_dir: Path) -> tuple[int, ...] | None:
    """What changes when the CRL or the issued certificates change (None: no CRL)."""
    try:
        crl = (ca_dir / CA_CRL).stat()
    except FileNotFoundError:
        return None
    try:
        issued = (ca_dir / ISSUED).stat().st_mtime_ns
    except FileNotFoundError:
        issued = 0
    return (crl.st_ino, crl.st_mtime_ns, crl.st_size, issued)


def revocation_list(
    ca_dir: Path | str, *, now: dt.datetime | None = None, grace: dt.timedelta = CRL_GRACE
) -> frozenset[str | int]:
    """What to pass as ``revoked=`` to verifiers: revoked org ids and revoked serials.

    Fails closed — raises :class:`CertificateError` (so every certificate check refuses) when
    the CRL is missing, not signed by the CA, past its ``nextUpdate`` plus ``grace``, or older
    (lower cRLNumber) than one this process accepted before (a rollback). Parsed once per
    version of the CRL file: every envelope opened and every peer identified asks."""
    ca_dir = Path(ca_dir).resolve()
    now = now or dt.datetime.now(dt.UTC)
    signature = _crl_signature(ca_dir)
    if signature is None:
        raise CertificateError(f"no CRL in {ca_dir}: revocation status unknown, refusing")
    with _REVOCATIONS_LOCK:
        cached = _REVOCATIONS.get(ca_dir)
    if cached is None or cached.file != signature:
        try:
            crl = load_crl(ca_dir)
        except (PkiError, CertificateError) as exc:
            raise CertificateError(f"{exc}: revocation status unknown, refusing") from None
        number = _crl_number(crl)
        with _REVOCATIONS_LOCK:
            highest = _HIGHEST_CRL.get(ca_dir, 0)
        if number < highest:
            raise CertificateError(
                f"CRL number {number} is older than number {highest} seen before (rollback): "
                "revocation status unknown, refusing"
            )
        revoked = frozenset[str | int](revoked_orgs(ca_dir)) | revoked_serials(ca_dir)
        next_update = crl.next_update_utc or now  # a CRL without nextUpdate is never fresh
        cached = _Revocations(signature, revoked, next_update, number)
        with _REVOCATIONS_LOCK:
            _REVOCATIONS[ca_dir] = cached
            _HIGHEST_CRL[ca_dir] = max(number, _HIGHEST_CRL.get(ca_dir, 0))
    if now > cached.next_update + grace:
        raise CertificateError(
            f"the CRL is stale (nextUpdate {cached.next_update:%Y-%m-%d %H:%M} UTC passed): "
            "revocation status unknown, refusing"
        )
    return cached.revoked
