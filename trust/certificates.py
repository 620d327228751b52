"""Certificate rules of the regional PKI, as pure functions (no files, no network).

Every organisation certificate names its organisation twice, in agreement: the subject
``CN=<org id>`` and a URI SAN ``urn:ipjms:org:<org id>``. A certificate has one *usage*:

- ``tls``        — mutual TLS on gRPC: EKU serverAuth + clientAuth, keyUsage digitalSignature;
- ``signing``    — envelope and JWT signatures: keyUsage digitalSignature + contentCommitment;
- ``encryption`` — the X25519 key envelopes are sealed to: keyUsage keyAgreement.

:func:`verify_peer_certificate` is the one check every verifier runs: issued directly by the
regional CA (signature and issuer name), inside its validity window (and the CA's), not revoked
(by organisation id or by serial), and of the expected usage. It returns the organisation id or
raises :class:`CertificateError` with a reason that is safe to show.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateError",
    "Usage",
    "ORG_URN_PREFIX",
    "ORG_ID_PATTERN",
    "check_org_id",
    "org_id_of",
    "load_certificate",
    "fingerprint",
    "pem_fingerprint",
    "verify_peer_certificate",
    "crl_revoked_serials",
    "ORG_DNS_SUFFIX",
    "org_dns_name",
]

Usage = Literal["tls", "signing", "encryption"]
ORG_URN_PREFIX = "urn:ipjms:org:"
ORG_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Every organisation certificate also names ``<org id>.org.ipjms.invalid`` as a DNS SAN (a
# reserved TLD, never resolvable): a TLS client that must reach one *organisation* — the node
# its coordinator — checks the server's certificate against that name instead of a host name
# (``grpc.ssl_target_name_override``), so another organisation's certificate from the same CA,
# valid for the same host, is refused in the handshake. The CA never puts the suffix in --host.
ORG_DNS_SUFFIX = ".org.ipjms.invalid"


def org_dns_name(org_id: str) -> str:
    """The DNS SAN that names organisation ``org_id`` in its certificates."""
    return check_org_id(org_id) + ORG_DNS_SUFFIX


class CertificateError(Exception):
    """A certificate was refused; the message says why (safe to show to the peer)."""


def check_org_id(org_id: str) -> str:
    if not isinstance(org_id, str) or not ORG_ID_PATTERN.match(org_id):
        raise CertificateError(
            f"invalid organisation id {org_id!r} (1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric)"
        )
    return org_id


def load_certificate(cert: bytes | str | x509.Certificate) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode() if isinstance(cert, str) else bytes(cert)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a certificate: {exc}") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=256)
def pem_fingerprint(cert_pem: bytes) -> str:
    """:func:`fingerprint` of a certificate given as PEM (or DER) bytes, cached by the exact
    bytes (issue 19: the coordinator checks its peer's registered fingerprint on every gRPC
    call; the parse is a small part of that call, about 1 % of its handler time in py-spy).
    Bytes that are no certificate raise :class:`CertificateError` and are not cached."""
    return fingerprint(load_certificate(cert_pem))


def org_id_of(cert: x509.Certificate) -> str:
    """The organisation a certificate names (CN and URI SAN must agree)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CertificateError("certificate subject must hold exactly one CN")
    cn = cns[0].value
    cn = cn.decode() if isinstance(cn, bytes) else cn
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("certificate has no organisation URI SAN") from None
    urns = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    org_urns = [u[len(ORG_URN_PREFIX) :] for u in urns if u.startswith(ORG_URN_PREFIX)]
    if len(org_urns) != 1 or org_urns[0] != cn:
        raise CertificateError("certificate CN and organisation URI SAN disagree")
    return check_org_id(cn)


def _usage_ok(cert: x509.Certificate, usage: Usage) -> bool:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if ku.key_cert_sign:
        return False  # a CA certificate is never an organisation certificate
    if usage == "encryption":
        return ku.key_agreement and not ku.digital_signature
    if usage == "signing":
        return ku.digital_signature and ku.content_commitment and not ku.key_agreement
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return (
        ku.digital_signature
        and ExtendedKeyUsageOID.SERVER_AUTH in eku
        and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    )


def verify_peer_certificate(
    cert_pem: bytes | str | x509.Certificate,
    ca_cert_pem: bytes | str | x509.Certificate,
    *,
    revoked: Collection[str | int] = (),
    now: dt.datetime | None = None,
    usage: Usage = "tls",
) -> str:
    """Return the organisation id of ``cert_pem`` if the regional CA vouches for it.

    ``revoked`` holds organisation ids (str) and/or certificate serial numbers (int), e.g. from
    :func:`trust.pki.revocation_list` or :func:`crl_revoked_serials`.
    """
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if isinstance(cert_pem, bytes | str) and isinstance(ca_cert_pem, bytes | str):
        facts = _facts_of_pem(_as_bytes(cert_pem), _as_bytes(ca_cert_pem), usage)
    else:
        facts = _facts(load_certificate(cert_pem), load_certificate(ca_cert_pem), usage)
    # The checks in their order; only what cannot change for these bytes was worked out once.
    if facts.ca_problem:
        raise CertificateError(facts.ca_problem)
    if not facts.ca_not_before <= now <= facts.ca_not_after:
        raise CertificateError("the CA certificate is outside its validity period")
    if facts.issuer_problem:
        raise CertificateError(facts.issuer_problem)
    if now < facts.not_before:
        raise CertificateError("certificate is not yet valid")
    if now > facts.not_after:
        raise CertificateError("certificate has expired")
    if facts.org_problem:
        raise CertificateError(facts.org_problem)
    if facts.serial in revoked:
        raise CertificateError(f"certificate serial {facts.serial:x} has been revoked")
    if facts.org_id in revoked:
        raise CertificateError(f"organisation {facts.org_id} has been revoked")
    if not facts.usage_ok:
        raise CertificateError(f"certificate is not valid for {usage} (wrong key usage)")
    return facts.org_id


@dataclass(frozen=True)
class _CertFacts:
    """What a certificate's bytes and the CA's bytes settle once and for all: the signature,
    the names, the key usage and the validity dates (the time and revocations are checked at
    every call). Problems are kept as messages so the checks keep their order."""

    ca_problem: str
    ca_not_before: dt.datetime
    ca_not_after: dt.datetime
    issuer_problem: str
    not_before: dt.datetime
    not_after: dt.datetime
    org_problem: str
    org_id: str
    serial: int
    usage_ok: bool


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


@functools.lru_cache(maxsize=256)
def _facts_of_pem(cert_pem: bytes, ca_pem: bytes, usage: Usage) -> _CertFacts:
    """Cached by the exact bytes (issue 19: every gRPC call and every envelope opened verifies
    its peer's certificate; the ECDSA check was ~0.5 ms of each)."""
    return _facts(load_certificate(cert_pem), load_certificate(ca_pem), usage)


def _facts(cert: x509.Certificate, ca: x509.Certificate, usage: Usage) -> _CertFacts:
    ca_problem = ""
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            ca_problem = "trust anchor is not a CA certificate"
    except x509.ExtensionNotFound:
        ca_problem = "trust anchor is not a CA certificate"
    issuer_problem = ""
    if cert.issuer != ca.subject:
        issuer_problem = "certificate was not issued by the regional CA (foreign issuer)"
    else:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            issuer_problem = "certificate signature does not verify against the regional CA"
    org_problem, org_id = "", ""
    try:
        org_id = org_id_of(cert)
    except CertificateError as exc:
        org_problem = str(exc)
    return _CertFacts(
        ca_problem=ca_problem,
        ca_not_before=ca.not_valid_before_utc,
        ca_not_after=ca.not_valid_after_utc,
        issuer_problem=issuer_problem,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        org_problem=org_problem,
        org_id=org_id,
        serial=cert.serial_number,
        usage_ok=_usage_ok(cert, usage),
    )


def crl_revoked_serials(
    crl_pem: bytes | x509.CertificateRevocationList, ca_cert_pem: bytes | str | x509.Certificate
) -> frozenset[int]:
    """Serials listed in a CRL, after checking that the regional CA signed it."""
    crl = crl_pem if isinstance(crl_pem, x509.CertificateRevocationList) else None
    if crl is None:
        try:
            crl = x509.load_pem_x509_crl(bytes(crl_pem))  # type: ignore[arg-type]
        except ValueError as exc:
            raise CertificateError(f"not a CRL: {exc}") from None
    ca = load_certificate(ca_cert_pem)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise CertificateError("CRL is not signed by the regional CA")
    return frozenset(entry.serial_number for entry in crl)
