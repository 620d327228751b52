"""The ristretto255 group (RFC 9496) in pure Python, over edwards25519 in extended coordinates.

A fallback for :mod:`trust.oprf` where the system libsodium is absent (see
:mod:`trust.group_backend`, which decides when it may be used). **Not constant time:** Python's
integers take time that depends on their values, and the scalar multiplication below branches on
the scalar's bits, so a process using this module leaks timing about its secret scalars. It is
for a one-machine demo or test only; production uses libsodium.

The byte-level functions mirror libsodium's ``crypto_core_ristretto255_*`` and
``crypto_scalarmult_ristretto255*`` with the same semantics, and ``tests/trust/test_oprf.py``
checks that both agree:

* :func:`is_valid_point` — a canonical encoding of a group element (the identity, 32 zero bytes,
  is valid, as in libsodium);
* :func:`scalarmult` / :func:`scalarmult_base` — the scalar's top bit is cleared (libsodium's
  ``t[31] &= 127``); an invalid element or an identity result raises :class:`GroupError`;
* :func:`from_hash` — RFC 9496 §4.3.4 element derivation from 64 bytes (two one-way maps, added);
* :func:`scalar_reduce`, :func:`scalar_invert` (refuses 32 zero bytes), :func:`scalar_random`
  (uniform in ``[1, L)``).

Formulas: RFC 9496 §4.3 (decode, encode, SQRT_RATIO_M1, MAP); point addition and doubling are
Hisil-Wong-Carter-Dawson 2008 for a = -1 ("add-2008-hwcd-3", "dbl-2008-hwcd").
"""

from __future__ import annotations

import secrets

__all__ = [
    "GroupError",
    "ORDER",
    "is_valid_point",
    "from_hash",
    "scalarmult",
    "scalarmult_base",
    "scalar_reduce",
    "scalar_invert",
    "scalar_random",
]

P = 2**255 - 19
ORDER = 2**252 + 27742317777372353535851937790883648493  # L, RFC 9496 §4.1
D = (-121665 * pow(121666, -1, P)) % P
_D2 = (2 * D) % P
# RFC 9496 §4.1 constants (checked against the RFC's printed values in tests/trust/test_oprf.py)
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
SQRT_AD_MINUS_ONE = 25063068953384623474111414158702152701244531502492656460079210482610430750235
INVSQRT_A_MINUS_D = 54469307008909316920995813868745141605393597292927456921205312896311721017578
ONE_MINUS_D_SQ = 1159843021668779879193775521855586647937357759715417654439879720876111806838
D_MINUS_ONE_SQ = 40440834346308536858101042469323190826248399146238708352240133220865137265952

_Point = tuple[int, int, int, int]  # extended coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, xy = T/Z
_IDENTITY: _Point = (0, 1, 1, 0)
# the generator B (RFC 8032 §5.1): y = 4/5, x the non-negative root
_BY = (4 * pow(5, -1, P)) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BASE: _Point = (_BX, _BY, 1, (_BX * _BY) % P)
_MASK_255 = (1 << 255) - 1


class GroupError(ValueError):
    """An invalid or non-canonical element, an identity result, or a zero scalar to invert."""


def _is_negative(x: int) -> bool:
    return (x % P) & 1 == 1


def _abs(x: int) -> int:
    x %= P
    return P - x if x & 1 else x


def _sqrt_ratio_m1(u: int, v: int) -> tuple[bool, int]:
    """RFC 9496 §4.2: (u/v is square, the non-negative sqrt(u/v) or sqrt(i·u/v))."""
    v3 = v * v % P * v % P
    v7 = v3 * v3 % P * v % P
    r = u * v3 % P * pow(u * v7 % P, (P - 5) // 8, P) % P
    check = v * r % P * r % P
    u %= P
    correct = check == u
    flipped = check == (-u) % P
    flipped_i = check == (-u * SQRT_M1) % P
    if flipped or flipped_i:
        r = r * SQRT_M1 % P
    return correct or flipped, _abs(r)


def _add(p1: _Point, p2: _Point) -> _Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * _D2 % P * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1: _Point) -> _Point:
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k: int, point: _Point) -> _Point:
    """k·point by a 4-bit fixed window (not constant time: see the module docstring)."""
    table = [_IDENTITY, point]
    for _ in range(14):
        table.append(_add(table[-1], point))
    result = _IDENTITY
    for shift in range(252, -1, -4):
        result = _double(_double(_double(_double(result))))
        digit = (k >> shift) & 15
        if digit:
            result = _add(result, table[digit])
    return result


def _decode(data: bytes) -> _Point:
    """RFC 9496 §4.3.1: refuse a wrong length, a non-canonical or negative s, or a non-element."""
    if len(data) != 32:
        raise GroupError("a ristretto255 element is 32 bytes")
    s = int.from_bytes(data, "little")
    if s >= P or _is_negative(s):
        raise GroupError("not a canonical ristretto255 encoding")
    ss = s * s % P
    u1 = (1 - ss) % P
    u2 = (1 + ss) % P
    u2_sqr = u2 * u2 % P
    v = (-(D * u1 % P * u1) - u2_sqr) % P
    was_square, invsqrt = _sqrt_ratio_m1(1, v * u2_sqr % P)
    den_x = invsqrt * u2 % P
    den_y = invsqrt * den_x % P * v % P
    x = _abs(2 * s * den_x)
    y = u1 * den_y % P
    t = x * y % P
    if not was_square or _is_negative(t) or y == 0:
        raise GroupError("not a valid ristretto255 element")
    return (x, y, 1, t)


def _encode(point: _Point) -> bytes:
    """RFC 9496 §4.3.2."""
    x0, y0, z0, t0 = point
    u1 = (z0 + y0) * (z0 - y0) % P
    u2 = x0 * y0 % P
    _, invsqrt = _sqrt_ratio_m1(1, u1 * u2 % P * u2 % P)
    den1 = invsqrt * u1 % P
    den2 = invsqrt * u2 % P
    z_inv = den1 * den2 % P * t0 % P
    if _is_negative(t0 * z_inv):
        x, y, den_inv = y0 * SQRT_M1 % P, x0 * SQRT_M1 % P, den1 * INVSQRT_A_MINUS_D % P
    else:
        x, y, den_inv = x0, y0, den2
    if _is_negative(x * z_inv):
        y = -y
    return _abs(den_inv * (z0 - y)).to_bytes(32, "little")


def _map(t: int) -> _Point:
    """RFC 9496 §4.3.4 MAP (the Elligator 2 variant)."""
    r = SQRT_M1 * t % P * t % P
    u = (r + 1) * ONE_MINUS_D_SQ % P
    v = (-1 - r * D) * (r + D) % P
    was_square, s = _sqrt_ratio_m1(u, v)
    if was_square:
        c = P - 1
    else:
        s, c = (-_abs(s * t)) % P, r
    n = (c * (r - 1) % P * D_MINUS_ONE_SQ - v) % P
    w0 = 2 * s * v % P
    w1 = n * SQRT_AD_MINUS_ONE % P
    w2 = (1 - s * s) % P
    w3 = (1 + s * s) % P
    return (w0 * w3 % P, w2 * w1 % P, w1 * w3 % P, w0 * w2 % P)


def is_valid_point(data: bytes) -> bool:
    """``crypto_core_ristretto255_is_valid_point``: a canonical encoding of an element."""
    try:
        _decode(data)
    except GroupError:
        return False
    return True


def from_hash(uniform: bytes) -> bytes:
    """``crypto_core_ristretto255_from_hash``: 64 uniform bytes → element (RFC 9496 §4.3.4)."""
    if len(uniform) != 64:
        raise GroupError("from_hash takes 64 bytes")
    t1 = int.from_bytes(uniform[:32], "little") & _MASK_255
    t2 = int.from_bytes(uniform[32:], "little") & _MASK_255
    return _encode(_add(_map(t1 % P), _map(t2 % P)))


def _scalar_int(scalar: bytes) -> int:
    if len(scalar) != 32:
        raise GroupError("a scalar is 32 bytes")
    return int.from_bytes(scalar, "little") & _MASK_255  # libsodium: t[31] &= 127


def _encode_non_identity(point: _Point) -> bytes:
    encoded = _encode(point)
    if encoded == bytes(32):
        raise GroupError("scalar multiplication gave the identity")
    return encoded


def scalarmult(scalar: bytes, element: bytes) -> bytes:
    """``crypto_scalarmult_ristretto255``: scalar·element; refuses a bad element or identity."""
    k = _scalar_int(scalar) % ORDER
    return _encode_non_identity(_mul(k, _decode(element)))


def scalarmult_base(scalar: bytes) -> bytes:
    """``crypto_scalarmult_ristretto255_base``: scalar·B; refuses an identity result."""
    return _encode_non_identity(_mul(_scalar_int(scalar) % ORDER, _BASE))


def scalar_reduce(wide: bytes) -> bytes:
    """``crypto_core_ristretto255_scalar_reduce``: 64 bytes little-endian mod L → 32 bytes."""
    if len(wide) != 64:
        raise GroupError("scalar_reduce takes 64 bytes")
    return (int.from_bytes(wide, "little") % ORDER).to_bytes(32, "little")


def scalar_invert(scalar: bytes) -> bytes:
    """``crypto_core_ristretto255_scalar_invert``: s^(L-2) mod L; refuses 32 zero bytes."""
    if len(scalar) != 32:
        raise GroupError("a scalar is 32 bytes")
    if scalar == bytes(32):
        raise GroupError("zero has no inverse")
    return pow(int.from_bytes(scalar, "little"), ORDER - 2, ORDER).to_bytes(32, "little")


def scalar_random() -> bytes:
    """``crypto_core_ristretto255_scalar_random``: uniform in [1, L) from the OS's CSPRNG."""
    return (secrets.randbelow(ORDER - 1) + 1).to_bytes(32, "little")
