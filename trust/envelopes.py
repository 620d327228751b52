"""Sealed envelopes: encrypted to the recipient organisation, signed by the sender.

``seal``: an ephemeral X25519 key agrees a secret with the recipient's X25519 key; HKDF-SHA256
(salt = ephemeral ‖ recipient public key, info binds sender, recipient and envelope id) derives
an AES-256-GCM key; the payload is encrypted with the canonical-JSON routing header as associated
data; the sender then signs SHA-256 over everything that precedes the signature (ECDSA P-384 or
Ed25519). ``open_sealed``: verify the signature, check the recipient and expiry, decrypt.

The coordinator reads :attr:`SealedEnvelope.header` (via :meth:`SealedEnvelope.from_bytes`)
without any key. Envelope ids are random UUIDs; *de-duplication is the job of whoever stores
envelopes* (the coordinator queue and the receiving node keep the ids they have seen), this
module only guarantees that an id cannot be changed without breaking the signature.

The clear header says only what routing needs — kind, sender, recipient, the routing pseudonym
of the pair, times and the id. Purpose, data classes and the consent reference travel inside the
encrypted payload (the registry's signed decision, bound to the envelope id, names them); the
coordinator's consent check is a re-decision *by envelope id* (``consent.decisions``).

Wire format, version 3 (all integers big-endian)::

    b"IPJE" | 0x03 | u32 header_len | header (canonical JSON) | 32 ephemeral X25519 public key
    | 12 nonce | u64 ciphertext_len | ciphertext (incl. 16-byte GCM tag) | u16 sig_len | signature

The ciphertext encrypts the payload padded to a Padmé bucket (:func:`pad`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trust.canonical_json import canonical_json
from trust.certificates import ORG_ID_PATTERN, load_certificate, verify_peer_certificate

__all__ = [
    "EnvelopeError",
    "EnvelopeHeader",
    "SealedEnvelope",
    "seal",
    "open_sealed",
    "seal_to",
    "open_from",
    "HEADER_FIELDS",
    "KINDS",
    "DATA_KINDS",
    "REQUEST_KINDS",
    "MAX_CLOCK_SKEW",
    "MAX_LIFETIME",
    "check_times",
]

MAGIC, VERSION = b"IPJE", 3
# Version 3 (what ``seal`` writes and the only one read): the header of HEADER_FIELDS below,
# without the purpose, classes and consent reference that versions 1–2 carried in clear (issue
# 23) — an envelope of those versions is refused as unreadable, not half-understood. Since
# version 2 the payload is padded (ISO/IEC 7816-4: 0x80 then zeros) to a Padmé size bucket, so
# the ciphertext's length — which the coordinator stores — reveals only the bucket: at most
# ~12 % overhead, O(log log n) bits of size (Nikitin et al., "Reducing Metadata Leakage from
# Encrypted Files and Communication with PURBs", PETS 2019). The version byte is signed.
READABLE_VERSIONS = (3,)
MIN_PADDED = 1024
MAX_HEADER = 64 * 1024
MAX_CIPHERTEXT = 1 << 31
# The envelope kinds of the network — the one list (the coordinator routes only these; a node
# imports every kind but a record query, which it answers) — and, of those, the kinds whose
# payload discloses clinical data, so they must carry the registry's decision bound to their
# id (its purpose is one of ``consent.policy.PURPOSES``; it names the permitted classes).
KINDS = frozenset(
    {"referral", "consultation", "task-update", "advice", "record-query", "record-answer"}
)
DATA_KINDS = frozenset({"referral", "consultation", "advice", "record-answer"})
# The kinds that open an exchange (a doctor's request); task updates travel only along one.
REQUEST_KINDS = frozenset({"referral", "consultation"})
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces
HEADER_FIELDS = (
    "envelope_id",
    "kind",
    "sender",
    "recipient",
    "patient_pseudonym",
    "created_at",
    "expires_at",
)
# How far a sender's clock may run ahead, and the longest an envelope may live: the one rule
# for both the coordinator (at Send) and the receiver (before it decrypts) — an envelope
# created a year ahead and valid for eleven is refused by both.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_LIFETIME = dt.timedelta(days=30)
_PREFIX = struct.Struct(">4sBI")
_DOMAIN = b"IPJMS-envelope-v1\x00"
Verifier = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
Signer = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class EnvelopeError(Exception):
    """An envelope is malformed, forged, tampered with, expired or not for us."""


def _time(value: dt.datetime | str, name: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EnvelopeError(f"header {name} is not an ISO 8601 time") from None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise EnvelopeError(f"header {name} must be a timezone-aware time")
    return value.astimezone(dt.UTC).replace(microsecond=0)


def _iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_unix(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EnvelopeError(f"header {name} must be unix seconds")
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise EnvelopeError(f"header {name} is out of range") from None


@dataclass(frozen=True)
class EnvelopeHeader:
    """The routing header: readable by the coordinator, bound to the ciphertext. Nothing in it
    says why the data goes or which data: that is inside, in the signed consent decision."""

    envelope_id: str
    kind: str
    sender: str
    recipient: str
    patient_pseudonym: str | None
    created_at: dt.datetime
    expires_at: dt.datetime

    def __post_init__(self) -> None:
        try:
            if str(uuid.UUID(self.envelope_id)) != self.envelope_id:
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            raise EnvelopeError("header envelope_id must be a lowercase UUID") from None
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise EnvelopeError(f"header kind {self.kind!r} is invalid")
        for name in ("sender", "recipient"):
            value = getattr(self, name)
            if not isinstance(value, str) or not ORG_ID_PATTERN.match(value):
                raise EnvelopeError(f"header {name} {value!r} is not an organisation id")
        pseudonym = self.patient_pseudonym
        if pseudonym is not None and (
            not isinstance(pseudonym, str) or not _TOKEN.match(pseudonym)
        ):
            raise EnvelopeError("header patient_pseudonym is invalid")
        object.__setattr__(self, "created_at", _time(self.created_at, "created_at"))
        object.__setattr__(self, "expires_at", _time(self.expires_at, "expires_at"))
        if self.expires_at <= self.created_at:
            raise EnvelopeError("header expires_at must be after created_at")

    @classmethod
    def new(
        cls,
        *,
        kind: str,
        sender: str,
        recipient: str,
        patient_pseudonym: str | None = None,
        ttl: dt.timedelta = dt.timedelta(days=7),
        now: dt.datetime | None = None,
        envelope_id: str | None = None,
    ) -> EnvelopeHeader:
        """A header created now, expiring after ``ttl``, with a fresh random envelope id (or
        ``envelope_id``, one chosen before — e.g. to bind a consent decision to it)."""
        now = now or dt.datetime.now(dt.UTC)
        return cls(
            envelope_id or str(uuid.uuid4()),
            kind,
            sender,
            recipient,
            patient_pseudonym,
            now,
            now + ttl,
        )

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in HEADER_FIELDS}
        d["created_at"], d["expires_at"] = _iso(self.created_at), _iso(self.expires_at)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> EnvelopeHeader:
        if not isinstance(data, dict) or set(data) != set(HEADER_FIELDS):
            raise EnvelopeError("header must hold exactly the envelope header fields")
        return cls(**{name: data[name] for name in HEADER_FIELDS})

    def to_record(self) -> dict[str, Any]:
        """The flat form of the gRPC message (``trust.envelope_wire``) and of the coordinator's
        queue rows: times as unix seconds, no pseudonym as ``""``."""
        record = {name: getattr(self, name) for name in HEADER_FIELDS}
        record["patient_pseudonym"] = self.patient_pseudonym or ""
        record["created_at"] = int(self.created_at.timestamp())
        record["expires_at"] = int(self.expires_at.timestamp())
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> EnvelopeHeader:
        """The inverse of :meth:`to_record` (extra keys are ignored); validates like the
        constructor, so anything malformed raises :class:`EnvelopeError`."""
        missing = [name for name in HEADER_FIELDS if name not in record]
        if missing:
            raise EnvelopeError(f"header lacks {missing}")
        values = {name: record[name] for name in HEADER_FIELDS}
        values["patient_pseudonym"] = values["patient_pseudonym"] or None
        values["created_at"] = _from_unix(values["created_at"], "created_at")
        values["expires_at"] = _from_unix(values["expires_at"], "expires_at")
        return cls(**values)

    def canonical(self) -> bytes:
        return canonical_json(self.to_dict())

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= self.expires_at


def check_times(
    header: EnvelopeHeader,
    now: dt.datetime | None = None,
    *,
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
    max_lifetime: dt.timedelta = MAX_LIFETIME,
) -> None:
    """Raise :class:`EnvelopeError` unless the envelope is live now: created no more than
    ``max_skew`` in the future, not expired, and living at most ``max_lifetime``."""
    now = now or dt.datetime.now(dt.UTC)
    if header.created_at > now + max_skew:
        raise EnvelopeError("envelope created_at lies in the future")
    if header.expires_at - header.created_at > max_lifetime:
        raise EnvelopeError(f"envelope lifetime exceeds the maximum of {max_lifetime.days} days")
    if header.is_expired(now):
        raise EnvelopeError("envelope expired")


def padded_length(n: int) -> int:
    """The Padmé bucket for ``n`` bytes (never below ``MIN_PADDED``)."""
    if n <= MIN_PADDED:
        return MIN_PADDED
    e = n.bit_length() - 1  # floor(log2 n)
    mask = (1 << (e - e.bit_length())) - 1  # keep floor(log2 e) + 1 significant bits
    return (n + mask) & ~mask


def pad(payload: bytes) -> bytes:
    target = padded_length(len(payload) + 1)
    return payload + b"\x80" + bytes(target - len(payload) - 1)


def unpad(padded: bytes) -> bytes:
    body = padded.rstrip(b"\x00")
    if not body or body[-1] != 0x80:
        raise EnvelopeError("envelope payload padding is invalid")
    return body[:-1]


@dataclass(frozen=True)
class SealedEnvelope:
    header: EnvelopeHeader
    header_bytes: bytes
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes = field(repr=False)
    version: int = VERSION

    @property
    def envelope_id(self) -> str:
        return self.header.envelope_id

    def _signed_parts(self) -> list[bytes]:
        return _signed_parts(
            self.header_bytes, self.ephemeral_public, self.nonce, self.ciphertext, self.version
        )

    def to_bytes(self) -> bytes:
        parts = self._signed_parts()
        parts.append(struct.pack(">H", len(self.signature)))
        parts.append(self.signature)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SealedEnvelope:
        """Parse (never decrypt) an envelope; anything malformed raises EnvelopeError."""
        view = memoryview(data)
        try:
            magic, version, hlen = _PREFIX.unpack_from(view, 0)
        except struct.error:
            raise EnvelopeError("envelope too short") from None
        if magic != MAGIC:
            raise EnvelopeError("not an IPJMS envelope")
        if version not in READABLE_VERSIONS:
            raise EnvelopeError(f"unsupported envelope version {version}")
        if hlen > MAX_HEADER:
            raise EnvelopeError("envelope header too large")
        pos = _PREFIX.size
        fixed_after_header = 32 + 12 + 8
        if len(view) < pos + hlen + fixed_after_header:
            raise EnvelopeError("envelope truncated")
        header_bytes = bytes(view[pos : pos + hlen])
        pos += hlen
        eph = bytes(view[pos : pos + 32])
        nonce = bytes(view[pos + 32 : pos + 44])
        (clen,) = struct.unpack_from(">Q", view, pos + 44)
        pos += fixed_after_header
        if clen < 16 or clen > MAX_CIPHERTEXT or len(view) < pos + clen + 2:
            raise EnvelopeError("envelope ciphertext length is wrong")
        ciphertext = bytes(view[pos : pos + clen])
        pos += clen
        (slen,) = struct.unpack_from(">H", view, pos)
        pos += 2
        if slen == 0 or len(view) != pos + slen:
            raise EnvelopeError("envelope signature length is wrong")
        signature = bytes(view[pos:])
        header = _parse_header(header_bytes)
        return cls(header, header_bytes, eph, nonce, ciphertext, signature, version)


def _parse_header(raw: bytes) -> EnvelopeHeader:
    import json

    try:
        data = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("envelope header is not JSON") from None
    header = EnvelopeHeader.from_dict(data)
    if header.canonical() != raw:
        raise EnvelopeError("envelope header is not in canonical form")
    return header


def _signed_parts(
    header: bytes, eph: bytes, nonce: bytes, ciphertext: bytes, version: int = VERSION
) -> list[bytes]:
    return [
        _PREFIX.pack(MAGIC, version, len(header)),
        header,
        eph,
        nonce,
        struct.pack(">Q", len(ciphertext)),
        ciphertext,
    ]


def _digest(parts: list[bytes]) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    for part in parts:
        h.update(part)
    return h.digest()


# ECDSA signatures are malleable: (r, s) and (r, n - s) both verify. Signers emit the low-s
# form, verifiers accept only it, so an envelope has exactly one valid signature.
_CURVE_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def _curve_order(curve: ec.EllipticCurve) -> int:
    try:
        return _CURVE_ORDERS[curve.name]
    except KeyError:
        raise EnvelopeError(f"unsupported signature curve {curve.name}") from None


def low_s(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    """The DER ECDSA signature in its canonical low-s form."""
    r, s = decode_dss_signature(signature)
    n = _curve_order(curve)
    return encode_dss_signature(r, n - s) if s > n // 2 else signature


def _sign(key: Signer, digest: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return low_s(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))), key.curve)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(digest)
    raise TypeError("sender signing key must be an EC or Ed25519 private key")


def _verify(key: Verifier, signature: bytes, digest: bytes) -> None:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            try:
                r, s = decode_dss_signature(signature)
            except ValueError:
                raise EnvelopeError("envelope signature is not a DER ECDSA signature") from None
            if encode_dss_signature(r, s) != signature:
                raise EnvelopeError("envelope signature is not in canonical DER form")
            if not 0 < s <= _curve_order(key.curve) // 2:
                raise EnvelopeError("envelope signature is not in low-s form (malleated)")
            key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, digest)
        else:
            raise TypeError("sender verify key must be an EC or Ed25519 public key")
    except InvalidSignature:
        raise EnvelopeError("envelope signature is invalid") from None


def _content_key(shared: bytes, eph: bytes, recipient_pub: bytes, header: EnvelopeHeader) -> AESGCM:
    info = _DOMAIN + canonical_json([header.sender, header.recipient, header.envelope_id])
    key = HKDF(hashes.SHA256(), 32, salt=eph + recipient_pub, info=info).derive(shared)
    return AESGCM(key)


def seal(
    header: EnvelopeHeader,
    payload: bytes,
    *,
    sender_signing_key: Signer,
    recipient_encryption_public_key: x25519.X25519PublicKey,
) -> SealedEnvelope:
    header_bytes = header.canonical()
    eph_key = x25519.X25519PrivateKey.generate()
    eph = eph_key.public_key().public_bytes_raw()
    try:
        shared = eph_key.exchange(recipient_encryption_public_key)
    except ValueError:
        raise EnvelopeError("recipient encryption key is invalid") from None
    aead = _content_key(shared, eph, recipient_encryption_public_key.public_bytes_raw(), header)
    nonce = os.urandom(12)
    ciphertext = aead.encrypt(nonce, pad(payload), header_bytes)
    digest = _digest(_signed_parts(header_bytes, eph, nonce, ciphertext))
    signature = _sign(sender_signing_key, digest)
    return SealedEnvelope(header, header_bytes, eph, nonce, ciphertext, signature)


def open_sealed(
    envelope: SealedEnvelope | bytes,
    *,
    recipient_encryption_key: x25519.X25519PrivateKey | Sequence[x25519.X25519PrivateKey],
    sender_verify_key: Verifier,
    recipient: str | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """Verify, check recipient and times (:func:`check_times`), decrypt.

    ``sender_verify_key`` must be the key of
    ``envelope.header.sender`` (look it up by that id; :func:`open_from` does it from a cert).
    Several recipient keys may be given (current first, then keys replaced by rotation)."""
    env = envelope if isinstance(envelope, SealedEnvelope) else SealedEnvelope.from_bytes(envelope)
    _verify(sender_verify_key, env.signature, _digest(env._signed_parts()))
    header = env.header
    if recipient is not None and header.recipient != recipient:
        raise EnvelopeError(f"envelope is addressed to {header.recipient}, not {recipient}")
    check_times(header, now)
    keys = (
        [recipient_encryption_key]
        if isinstance(recipient_encryption_key, x25519.X25519PrivateKey)
        else list(recipient_encryption_key)
    )
    try:
        eph_pub = x25519.X25519PublicKey.from_public_bytes(env.ephemeral_public)
    except ValueError:
        raise EnvelopeError("envelope ephemeral key is invalid") from None
    for key in keys:
        try:
            shared = key.exchange(eph_pub)
            aead = _content_key(
                shared, env.ephemeral_public, key.public_key().public_bytes_raw(), header
            )
            plaintext = aead.decrypt(env.nonce, env.ciphertext, env.header_bytes)
        except (InvalidTag, ValueError):
            continue
        return unpad(plaintext) if env.version >= 2 else plaintext
    raise EnvelopeError("envelope cannot be decrypted with this organisation's key")


def seal_to(
    header: EnvelopeHeader,
    payload: bytes,
    *,
    sender: Any,
    recipient_encryption_cert_pem: bytes,
    revoked: Collection[str | int] = (),
    now: dt.datetime | None = None,
) -> SealedEnvelope:
    """Seal with ``sender`` (:class:`trust.pki.OrgCredentials`) to the recipient named by a
    CA-issued encryption certificate, checking that it belongs to ``header.recipient``."""
    if header.sender != sender.org_id:
        raise EnvelopeError(f"header sender {header.sender} is not {sender.org_id}")
    org = verify_peer_certificate(
        recipient_encryption_cert_pem,
        sender.ca_cert_pem,
        revoked=revoked,
        now=now,
        usage="encryption",
    )
    if org != header.recipient:
        raise EnvelopeError(f"encryption certificate belongs to {org}, not {header.recipient}")
    public = load_certificate(recipient_encryption_cert_pem).public_key()
    if not isinstance(public, x25519.X25519PublicKey):
        raise EnvelopeError("the recipient's encryption certificate holds no X25519 key")
    return seal(
        header,
        payload,
        sender_signing_key=sender.signing_key,
        recipient_encryption_public_key=public,
    )


def open_from(
    envelope: SealedEnvelope | bytes,
    *,
    recipient: Any,
    sender_signing_cert_pem: bytes,
    revoked: Collection[str | int] = (),
    now: dt.datetime | None = None,
) -> bytes:
    """Open with ``recipient`` (:class:`trust.pki.OrgCredentials`), trusting the sender's key
    only through its CA-issued signing certificate, which must name ``header.sender``."""
    env = envelope if isinstance(envelope, SealedEnvelope) else SealedEnvelope.from_bytes(envelope)
    org = verify_peer_certificate(
        sender_signing_cert_pem, recipient.ca_cert_pem, revoked=revoked, now=now, usage="signing"
    )
    if org != env.header.sender:
        raise EnvelopeError(f"signing certificate belongs to {org}, not {env.header.sender}")
    public = load_certificate(sender_signing_cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise EnvelopeError("the sender's signing certificate holds no EC or Ed25519 key")
    return open_sealed(
        env,
        recipient_encryption_key=[recipient.encryption_key, *recipient.previous_encryption_keys],
        sender_verify_key=public,
        recipient=recipient.org_id,
        now=now,
    )
