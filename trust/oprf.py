"""RFC 9497 OPRF(ristretto255, SHA-512), base mode (0x00): the primitive behind patient pseudonyms.

The pseudonymisation authority holds the key ``skS``; a node *blinds* its input, the authority
*evaluates* the blinded element without learning the input, and the node *finalises*:

    node:       blind, blinded = blind(input)                    # r·H(input), r random
    authority:  evaluated = blind_evaluate(skS, blinded)         # skS·r·H(input)
    node:       output = finalize(input, blind, evaluated)       # SHA-512(… r⁻¹·evaluated …)

``output`` equals :func:`evaluate` ``(skS, input)``, which only the key holder can compute, so
whoever holds a node's state (but not ``skS``) cannot test a guessed input against an output.

The group arithmetic is ristretto255 from :func:`trust.group_backend.selected`: libsodium's
(constant time, through ``pysodium``) where the system library is installed, else — only when
``IPJMS_OPRF_ALLOW_PURE_PYTHON=1`` — the pure-Python :mod:`trust.ristretto255` (not constant
time; one-machine demos and tests). The group is chosen at first use, not at import. The
hashing around it (``expand_message_xmd``, RFC 9380 §5.3.1; the context strings,
``DeriveKeyPair`` and ``Finalize``, RFC 9497 §3-4) is here. Checked against the
RFC's own test vectors (RFC 9497 Appendix A.1.1) in ``tests/trust/test_oprf.py``.
"""

from __future__ import annotations

import hashlib
import hmac

from trust import group_backend

__all__ = [
    "SUITE",
    "CONTEXT_STRING",
    "ELEMENT_BYTES",
    "SCALAR_BYTES",
    "OUTPUT_BYTES",
    "OprfError",
    "expand_message_xmd",
    "hash_to_group",
    "hash_to_scalar",
    "derive_key_pair",
    "random_key",
    "public_key",
    "blind",
    "blind_with",
    "blind_evaluate",
    "finalize",
    "evaluate",
]

SUITE = "ristretto255-SHA512"
MODE_OPRF = 0x00
# RFC 9497 §3.2: "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE.encode()
ELEMENT_BYTES = 32  # Ne
SCALAR_BYTES = 32  # Ns
OUTPUT_BYTES = 64  # Nh (SHA-512)
_HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
_HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
_DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING
_ZERO = bytes(32)


class OprfError(ValueError):
    """Invalid input, element or scalar (RFC 9497's InvalidInputError / DeserializeError)."""


def _group() -> group_backend.RistrettoGroup:
    return group_backend.selected()


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 with SHA-512 (b_in_bytes 64, s_in_bytes 128)."""
    b_in_bytes, s_in_bytes = 64, 128
    ell = -(-length // b_in_bytes)
    if ell > 255 or length > 65535 or len(dst) > 255:
        raise OprfError("expand_message_xmd: requested length or DST too long")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(s_in_bytes) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    b = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, b[-1], strict=True))
        b.append(hashlib.sha512(mixed + bytes([i]) + dst_prime).digest())
    return b"".join(b)[:length]


def hash_to_group(msg: bytes, dst: bytes = _HASH_TO_GROUP_DST) -> bytes:
    """hash_to_ristretto255 (RFC 9380 App. B / RFC 9496 §4.3.4): 64 uniform bytes, one-way map."""
    return _group().from_hash(expand_message_xmd(msg, dst, 64))


def hash_to_scalar(msg: bytes, dst: bytes = _HASH_TO_SCALAR_DST) -> bytes:
    """RFC 9497 §4.1: 64 uniform bytes read little-endian, reduced modulo the group order."""
    wide = expand_message_xmd(msg, dst, 64)
    return _group().scalar_reduce(wide)


def _check_scalar(scalar: bytes) -> None:
    if len(scalar) != SCALAR_BYTES or hmac.compare_digest(scalar, _ZERO):
        raise OprfError("a scalar is 32 bytes and not zero")
    reduced = _group().scalar_reduce(scalar + bytes(32))
    if not hmac.compare_digest(reduced, scalar):
        raise OprfError("a scalar must be reduced modulo the group order")


def _check_element(element: bytes) -> None:
    """DeserializeElement (RFC 9497 §2.1): a canonical ristretto255 encoding, not the identity."""
    if len(element) != ELEMENT_BYTES:
        raise OprfError(f"an element is {ELEMENT_BYTES} bytes")
    if hmac.compare_digest(element, _ZERO) or not _group().is_valid_point(element):
        raise OprfError("not a valid ristretto255 element (or the identity)")


def _mul(scalar: bytes, element: bytes) -> bytes:
    try:
        return _group().scalarmult(scalar, element)
    except group_backend.GroupError as exc:  # both groups refuse an identity result
        raise OprfError("scalar multiplication gave the identity") from exc


def derive_key_pair(seed: bytes, info: bytes) -> bytes:
    """RFC 9497 §3.2.1 DeriveKeyPair → the private scalar ``skS`` (32 bytes)."""
    if len(seed) != 32 or len(info) > 65535:
        raise OprfError("DeriveKeyPair takes a 32-byte seed and info of at most 65535 bytes")
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        sk = hash_to_scalar(derive_input + bytes([counter]), _DERIVE_KEY_PAIR_DST)
        if not hmac.compare_digest(sk, _ZERO):
            return sk
    raise OprfError("DeriveKeyPairError")


def random_key() -> bytes:
    """A fresh random private scalar (GenerateKeyPair)."""
    while True:
        sk = _group().scalar_random()
        if not hmac.compare_digest(sk, _ZERO):
            return sk


def public_key(sk: bytes) -> bytes:
    """pkS = skS·G (not needed in base mode; published so a key version can be named)."""
    _check_scalar(sk)
    return _group().scalarmult_base(sk)


def blind_with(private_input: bytes, blind_scalar: bytes) -> bytes:
    """RFC 9497 §3.3.1 Blind with a given scalar (tests: the RFC's fixed blind)."""
    _check_scalar(blind_scalar)
    input_element = hash_to_group(private_input)
    if hmac.compare_digest(input_element, _ZERO):
        raise OprfError("InvalidInputError")
    return _mul(blind_scalar, input_element)


def blind(private_input: bytes) -> tuple[bytes, bytes]:
    """(blind, blinded element) for ``private_input`` with a fresh random blind."""
    r = random_key()
    return r, blind_with(private_input, r)


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """The authority's step: ``skS·blinded`` (it never sees the input)."""
    _check_scalar(sk)
    _check_element(blinded_element)
    return _mul(sk, blinded_element)


def _finalize_hash(private_input: bytes, unblinded: bytes) -> bytes:
    if len(private_input) > 65535:
        raise OprfError("input longer than 65535 bytes")
    hash_input = (
        len(private_input).to_bytes(2, "big")
        + private_input
        + len(unblinded).to_bytes(2, "big")
        + unblinded
        + b"Finalize"
    )
    return hashlib.sha512(hash_input).digest()


def finalize(private_input: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """RFC 9497 §3.3.1 Finalize: unblind (``r⁻¹·evaluated``) and hash → 64-byte output."""
    _check_scalar(blind_scalar)
    _check_element(evaluated_element)
    inverse = _group().scalar_invert(blind_scalar)
    return _finalize_hash(private_input, _mul(inverse, evaluated_element))


def evaluate(sk: bytes, private_input: bytes) -> bytes:
    """RFC 9497 §3.3.1 server-side Evaluate: the output without blinding (key holder only)."""
    _check_scalar(sk)
    input_element = hash_to_group(private_input)
    if hmac.compare_digest(input_element, _ZERO):
        raise OprfError("InvalidInputError")
    return _finalize_hash(private_input, _mul(sk, input_element))
