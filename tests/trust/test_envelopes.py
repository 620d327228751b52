"""Sealed envelopes (must-show 3): tamper, wrong recipient, expiry; framing properties."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trust.envelopes import (
    MIN_PADDED,
    EnvelopeError,
    EnvelopeHeader,
    SealedEnvelope,
    open_from,
    open_sealed,
    padded_length,
    seal,
    seal_to,
    unpad,
)
from trust.pki import OrgCredentials, init_ca, issue_org, revocation_list, revoke

SENDER_SIGN = ec.generate_private_key(ec.SECP384R1())
RECIPIENT_ENC = x25519.X25519PrivateKey.generate()
OTHER_ENC = x25519.X25519PrivateKey.generate()


def _header(**kw: object) -> EnvelopeHeader:
    base: dict[str, object] = dict(
        kind="referral",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym="ab" * 32,
    )
    base.update(kw)
    return EnvelopeHeader.new(**base)  # type: ignore[arg-type]


def _sealed(payload: bytes = b'{"resourceType":"Bundle"}', **kw: object) -> SealedEnvelope:
    return seal(
        _header(**kw),
        payload,
        sender_signing_key=SENDER_SIGN,
        recipient_encryption_public_key=RECIPIENT_ENC.public_key(),
    )


def _open(data: bytes | SealedEnvelope, **kw: object) -> bytes:
    args: dict[str, object] = dict(
        recipient_encryption_key=RECIPIENT_ENC,
        sender_verify_key=SENDER_SIGN.public_key(),
        recipient="clinic-b",
    )
    args.update(kw)
    return open_sealed(data, **args)  # type: ignore[arg-type]


FIXED = _sealed(b"payload bytes of a small bundle").to_bytes()


def test_round_trip_and_header_without_keys() -> None:
    env = _sealed(b"x" * 5000)
    data = env.to_bytes()
    parsed = SealedEnvelope.from_bytes(data)
    assert parsed.header == env.header and parsed.header.kind == "referral"
    assert _open(data) == b"x" * 5000
    assert _open(parsed) == b"x" * 5000
    assert b"x" * 16 not in data  # the payload is not in clear


def test_ed25519_sender_works_too() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    env = seal(
        _header(),
        b"p",
        sender_signing_key=key,
        recipient_encryption_public_key=RECIPIENT_ENC.public_key(),
    )
    assert _open(env.to_bytes(), sender_verify_key=key.public_key()) == b"p"


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_single_byte_change_makes_opening_fail(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(FIXED) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(FIXED)
    tampered[pos] ^= flip
    with pytest.raises(EnvelopeError):
        _open(bytes(tampered))


def test_every_region_is_covered_by_byte_changes() -> None:
    # deterministic sweep over header, ephemeral key, nonce, ciphertext and signature
    for pos in range(len(FIXED)):
        tampered = bytearray(FIXED)
        tampered[pos] ^= 0x01
        with pytest.raises(EnvelopeError):
            _open(bytes(tampered))


@pytest.mark.parametrize("cut", [0, 3, 5, 9, 40, 200, -70, -2, -1])
def test_truncated_or_extended_input_is_an_envelope_error(cut: int) -> None:
    with pytest.raises(EnvelopeError):
        SealedEnvelope.from_bytes(FIXED[:cut])
    with pytest.raises(EnvelopeError):
        SealedEnvelope.from_bytes(FIXED + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_envelope_error(blob: bytes) -> None:
    for candidate in (blob, b"IPJE\x01" + blob, FIXED[:60] + blob):
        with pytest.raises(EnvelopeError):
            SealedEnvelope.from_bytes(candidate)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=4096),
    kind=st.sampled_from(["referral", "consultation", "task-update", "record-query"]),
    pseudonym=st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=64)),
)
def test_framing_round_trips(payload: bytes, kind: str, pseudonym: str | None) -> None:
    env = _sealed(payload, kind=kind, patient_pseudonym=pseudonym)
    again = SealedEnvelope.from_bytes(env.to_bytes())
    assert again == env
    assert _open(again) == payload


def test_sealed_for_one_org_cannot_be_opened_by_another() -> None:
    data = _sealed(b"secret").to_bytes()
    with pytest.raises(EnvelopeError, match="addressed to clinic-b"):
        _open(data, recipient="clinic-c", recipient_encryption_key=OTHER_ENC)
    # even ignoring the header's recipient, the other org's key does not decrypt it
    with pytest.raises(EnvelopeError, match="cannot be decrypted"):
        _open(data, recipient=None, recipient_encryption_key=OTHER_ENC)


def test_wrong_sender_key_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(EnvelopeError, match="signature"):
        _open(_sealed().to_bytes(), sender_verify_key=other.public_key())


def test_expired_envelope_refused() -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    env = _sealed(now=past, ttl=dt.timedelta(days=1))
    with pytest.raises(EnvelopeError, match="expired"):
        _open(env.to_bytes())
    assert _open(env.to_bytes(), now=past + dt.timedelta(hours=1))


def test_future_dated_long_lived_envelope_refused() -> None:
    """Attack (issue 23): created a year ahead, valid for eleven — the receiver, not only the
    coordinator, bounds clock skew and lifetime."""
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    with pytest.raises(EnvelopeError, match="future"):
        _open(_sealed(now=ahead, ttl=dt.timedelta(days=11 * 365)).to_bytes())
    long_lived = _sealed(ttl=dt.timedelta(days=11 * 365))
    with pytest.raises(EnvelopeError, match="lifetime"):
        _open(long_lived.to_bytes())
    slightly_ahead = _sealed(now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    assert _open(slightly_ahead.to_bytes())  # within the allowed skew


def test_malleated_ecdsa_signature_refused() -> None:
    """Attack (issue 23): (r, n - s) verifies under plain ECDSA; only the low-s form is accepted,
    and the signer always produces it."""
    n = int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    )
    for _ in range(4):
        env = _sealed()
        r, s = decode_dss_signature(env.signature)
        assert s <= n // 2  # the signer's output is canonical
        twin = dataclasses.replace(env, signature=encode_dss_signature(r, n - s))
        # the twin is a valid plain-ECDSA signature over the same digest…
        digest = hashlib.sha256(b"IPJMS-envelope-v1\x00" + b"".join(env._signed_parts()))
        SENDER_SIGN.public_key().verify(
            twin.signature, digest.digest(), ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        # …and is refused
        with pytest.raises(EnvelopeError, match="low-s"):
            _open(twin.to_bytes())
        assert _open(env.to_bytes())


def test_header_validation() -> None:
    with pytest.raises(EnvelopeError, match="kind"):
        _header(kind="Bad Kind")
    with pytest.raises(EnvelopeError, match="sender"):
        _header(sender="../x")
    with pytest.raises(EnvelopeError, match="expires_at"):
        _header(ttl=dt.timedelta(0))
    with pytest.raises(EnvelopeError, match="patient_pseudonym"):
        _header(patient_pseudonym="has spaces")
    h = _header()
    assert uuid.UUID(h.envelope_id).version == 4
    assert EnvelopeHeader.from_dict(h.to_dict()) == h


# --- with real PKI credentials -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OrgCredentials, OrgCredentials]:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(ca)
    return ca, issue_org(ca, "hosp-a"), issue_org(ca, "clinic-b")


def test_seal_to_and_open_from_use_ca_issued_certificates(
    pki: tuple[Path, OrgCredentials, OrgCredentials], tmp_path: Path
) -> None:
    ca, a, b = pki
    env = seal_to(
        _header(), b"bundle", sender=a, recipient_encryption_cert_pem=b.encryption_cert_pem
    )
    assert open_from(env.to_bytes(), recipient=b, sender_signing_cert_pem=a.signing_cert_pem) == (
        b"bundle"
    )
    # a recipient certificate for another org, or a signing cert that is not the sender's
    with pytest.raises(EnvelopeError, match="belongs to hosp-a"):
        seal_to(_header(), b"x", sender=a, recipient_encryption_cert_pem=a.encryption_cert_pem)
    with pytest.raises(EnvelopeError, match="belongs to clinic-b"):
        open_from(env, recipient=b, sender_signing_cert_pem=b.signing_cert_pem)
    # a sender impersonating hosp-a with a key from another CA
    init_ca(tmp_path / "evil")
    evil = issue_org(tmp_path / "evil", "hosp-a")
    forged = seal(
        _header(),
        b"x",
        sender_signing_key=evil.signing_key,
        recipient_encryption_public_key=b.encryption_public_key,
    )
    with pytest.raises(Exception, match="regional CA"):
        open_from(forged, recipient=b, sender_signing_cert_pem=evil.signing_cert_pem)
    with pytest.raises(EnvelopeError, match="signature"):
        open_from(forged, recipient=b, sender_signing_cert_pem=a.signing_cert_pem)


def test_rotation_keeps_in_flight_envelopes_openable_and_revocation_stops_sender(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca"
    init_ca(ca)
    a, b = issue_org(ca, "hosp-a"), issue_org(ca, "clinic-b")
    in_flight = seal_to(
        _header(), b"old", sender=a, recipient_encryption_cert_pem=b.encryption_cert_pem
    )
    b2 = issue_org(ca, "clinic-b")  # rotation while the envelope waits in the queue
    assert open_from(in_flight, recipient=b2, sender_signing_cert_pem=a.signing_cert_pem) == b"old"
    revoke(ca, "hosp-a")
    with pytest.raises(Exception, match="revoked"):
        open_from(
            in_flight,
            recipient=b2,
            sender_signing_cert_pem=a.signing_cert_pem,
            revoked=revocation_list(ca),
        )


def test_payloads_are_padded_to_size_buckets() -> None:
    """Issue 23: the ciphertext length (stored by the coordinator) was plaintext + 16 bytes.
    Sealed payloads are padded to Padmé buckets: different sizes, one length; at most ~12 %
    overhead above the 1 KiB minimum; the receiver gets the exact payload back."""
    lengths = set()
    for size in (0, 1, 500, 1000, 1023):
        env = _sealed(b"x" * size)
        lengths.add(len(env.ciphertext))
        assert _open(env.to_bytes()) == b"x" * size
    assert lengths == {MIN_PADDED + 16}
    near = {len(_sealed(b"y" * n).ciphertext) for n in range(196_700, 200_600, 97)}
    assert len(near) == 1  # ~4 kB of difference in a 200 kB referral is invisible
    for n in (1500, 10_000, 216_000, 3_000_000):
        bucket = padded_length(n + 1)
        assert n < bucket <= max(MIN_PADDED, (n + 1) * 1.12)
    with pytest.raises(EnvelopeError, match="padding"):
        unpad(b"abc\x00\x00")


def test_the_clear_header_says_nothing_of_purpose_classes_or_consent() -> None:
    """Issue 23: what the coordinator can read of an envelope without a key names no purpose,
    no data class and no consent; they travel inside, in the signed decision."""
    payload = b'{"purpose":"TREAT","classes":["Condition","Observation"],"consent":"Consent/1"}'
    env = _sealed(payload)
    parsed = SealedEnvelope.from_bytes(env.to_bytes())
    assert set(parsed.header.to_dict()) == {
        "envelope_id", "kind", "sender", "recipient", "patient_pseudonym", "created_at",
        "expires_at",
    }  # fmt: skip
    for word in (b"TREAT", b"purpose", b"Condition", b"Observation", b"classes", b"Consent"):
        assert word not in parsed.header_bytes
        assert word not in env.to_bytes()  # nor anywhere in clear in the sealed bytes
    assert _open(parsed) == payload


def test_an_envelope_of_an_earlier_version_is_refused() -> None:
    """A version-2 envelope (purpose and classes in its clear header) is not half-read."""
    data = bytearray(FIXED)
    data[4] = 2
    with pytest.raises(EnvelopeError, match="unsupported envelope version 2"):
        SealedEnvelope.from_bytes(bytes(data))
