"""trust/ristretto255.py (the pure-Python group) against RFC 9496's vectors and against libsodium
(property tests: both groups of trust/group_backend.py agree on random inputs and refuse the same
encodings); and trust/group_backend.py's choice when libsodium is absent (a subprocess in which
``ctypes.util.find_library`` finds nothing)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trust import group_backend, ristretto255

# RFC 9496 Appendix A.1: multiples of the generator, 0·B … 4·B
MULTIPLES_OF_B = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
]
# RFC 9496 Appendix A.2: non-canonical, negative, and non-square encodings (a selection)
BAD_ENCODINGS = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    # bit 255 set on 1·B: refused by the RFC; libsodium 1.0.18 alone would accept it
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2df6",
]
# RFC 9496 Appendix A.3: element derivation from SHA-512(label)
FROM_HASH = [
    (
        b"Ristretto is traditionally a short shot of espresso coffee",
        "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46",
    ),
    (
        b"made with the normal amount of ground coffee but extracted with",
        "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b",
    ),
    (
        b"about half the amount of water in the same amount of time",
        "006ccd2a9e6867e6a2c5cea83d3302cc9de128dd2a9a57dd8ee7b9d7ffe02826",
    ),
]
PURE = group_backend.PurePythonGroup()
HAS_LIBSODIUM = group_backend.libsodium_available()
needs_libsodium = pytest.mark.skipif(not HAS_LIBSODIUM, reason="system libsodium not installed")


def _scalar(n: int) -> bytes:
    return n.to_bytes(32, "little")


def test_constants_are_the_rfc9496_ones() -> None:
    p, d = ristretto255.P, ristretto255.D
    assert ristretto255.SQRT_M1**2 % p == p - 1
    assert ristretto255.SQRT_AD_MINUS_ONE**2 % p == (-d - 1) % p
    assert ristretto255.INVSQRT_A_MINUS_D**2 * (-1 - d) % p == 1
    assert (1 - d * d) % p == ristretto255.ONE_MINUS_D_SQ
    assert (d - 1) ** 2 % p == ristretto255.D_MINUS_ONE_SQ


@pytest.mark.parametrize(("n", "expected"), list(enumerate(MULTIPLES_OF_B)))
def test_multiples_of_the_generator(n: int, expected: str) -> None:
    if n == 0:  # as libsodium: an identity result is refused, the encoding itself is valid
        with pytest.raises(ristretto255.GroupError):
            ristretto255.scalarmult_base(_scalar(0))
        assert ristretto255.is_valid_point(bytes.fromhex(expected))
        return
    assert ristretto255.scalarmult_base(_scalar(n)).hex() == expected
    assert ristretto255.scalarmult(_scalar(n), bytes.fromhex(MULTIPLES_OF_B[1])).hex() == expected
    assert ristretto255.is_valid_point(bytes.fromhex(expected))


@pytest.mark.parametrize("encoding", BAD_ENCODINGS)
def test_bad_encodings_are_refused(encoding: str) -> None:
    element = bytes.fromhex(encoding)
    assert not ristretto255.is_valid_point(element)
    with pytest.raises(ristretto255.GroupError):
        ristretto255.scalarmult(_scalar(1), element)
    if HAS_LIBSODIUM:
        libsodium = group_backend.LibsodiumGroup()
        assert not libsodium.is_valid_point(element)
        with pytest.raises(group_backend.GroupError):
            libsodium.scalarmult(_scalar(1), element)


@pytest.mark.parametrize(("label", "expected"), FROM_HASH)
def test_from_hash_vectors(label: bytes, expected: str) -> None:
    assert ristretto255.from_hash(hashlib.sha512(label).digest()).hex() == expected


def test_scalars() -> None:
    order = ristretto255.ORDER
    assert ristretto255.scalar_reduce(_scalar(order) + bytes(32)) == bytes(32)
    assert ristretto255.scalar_reduce((order + 5).to_bytes(64, "little")) == _scalar(5)
    k = ristretto255.scalar_random()
    assert 0 < int.from_bytes(k, "little") < order
    inverse = int.from_bytes(ristretto255.scalar_invert(k), "little")
    assert inverse * int.from_bytes(k, "little") % order == 1
    with pytest.raises(ristretto255.GroupError):
        ristretto255.scalar_invert(bytes(32))
    with pytest.raises(ristretto255.GroupError):  # k·L = identity
        ristretto255.scalarmult(_scalar(order), bytes.fromhex(MULTIPLES_OF_B[1]))


# --- the two groups agree (modest example counts: the pure group costs ~ms per multiplication)


def _outcome(operation: Callable[..., bytes], *args: bytes) -> bytes | str:
    try:
        return operation(*args)
    except group_backend.GroupError:
        return "refused"


@needs_libsodium
@settings(max_examples=60, deadline=None)
@given(uniform=st.binary(min_size=64, max_size=64), scalar=st.binary(min_size=32, max_size=32))
def test_groups_agree_on_from_hash_and_scalarmult(uniform: bytes, scalar: bytes) -> None:
    libsodium = group_backend.LibsodiumGroup()
    element = PURE.from_hash(uniform)
    assert libsodium.from_hash(uniform) == element
    assert _outcome(PURE.scalarmult, scalar, element) == _outcome(
        libsodium.scalarmult, scalar, element
    )
    assert _outcome(PURE.scalarmult_base, scalar) == _outcome(libsodium.scalarmult_base, scalar)


@needs_libsodium
@settings(max_examples=300, deadline=None)
@given(encoding=st.binary(min_size=32, max_size=32))
def test_groups_agree_on_decoding_random_bytes(encoding: bytes) -> None:
    libsodium = group_backend.LibsodiumGroup()
    assert PURE.is_valid_point(encoding) == libsodium.is_valid_point(encoding)


@needs_libsodium
@settings(max_examples=60, deadline=None)
@given(uniform=st.binary(min_size=64, max_size=64))
def test_groups_agree_on_encode_decode_round_trips(uniform: bytes) -> None:
    """decode(encode(P)) = P: multiplying by 1 decodes and re-encodes, in both groups."""
    libsodium = group_backend.LibsodiumGroup()
    element = libsodium.from_hash(uniform)
    assert PURE.is_valid_point(element)
    if element == bytes(32):  # the identity (e.g. 64 zero bytes): both refuse it as a result
        assert _outcome(PURE.scalarmult, _scalar(1), element) == "refused"
        assert _outcome(libsodium.scalarmult, _scalar(1), element) == "refused"
        return
    assert (
        PURE.scalarmult(_scalar(1), element) == element == libsodium.scalarmult(_scalar(1), element)
    )


@needs_libsodium
@settings(max_examples=100, deadline=None)
@given(scalar=st.binary(min_size=32, max_size=32), wide=st.binary(min_size=64, max_size=64))
def test_groups_agree_on_scalar_invert_and_reduce(scalar: bytes, wide: bytes) -> None:
    libsodium = group_backend.LibsodiumGroup()
    assert PURE.scalar_reduce(wide) == libsodium.scalar_reduce(wide)
    assert _outcome(PURE.scalar_invert, scalar) == _outcome(libsodium.scalar_invert, scalar)


# --- without libsodium


def _without_libsodium(code: str, allow: bool) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ctypes finds no libsodium."""
    env = {k: v for k, v in os.environ.items() if k != group_backend.ALLOW_PURE_PYTHON_ENV}
    if allow:
        env[group_backend.ALLOW_PURE_PYTHON_ENV] = "1"
    prelude = "import ctypes.util\nctypes.util.find_library = lambda name: None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_without_libsodium_and_without_permission_the_error_names_what_to_install() -> None:
    done = _without_libsodium(
        """
        import sys
        from trust import oprf                      # importing does not touch pysodium
        assert "pysodium" not in sys.modules
        try:
            oprf.random_key()
        except RuntimeError as exc:
            print(type(exc).__name__, exc)
        assert "pysodium" not in sys.modules
        """,
        allow=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("GroupUnavailableError")
    for needed in ("libsodium23", "dnf install libsodium", "brew install libsodium"):
        assert needed in done.stdout
    assert "IPJMS_OPRF_ALLOW_PURE_PYTHON=1" in done.stdout


def test_without_libsodium_the_permission_selects_the_pure_group() -> None:
    done = _without_libsodium(
        """
        from trust import group_backend, oprf
        seed, info = bytes.fromhex("a3" * 32), b"test key"
        print(group_backend.selected().name, oprf.derive_key_pair(seed, info).hex())
        """,
        allow=True,
    )
    assert done.returncode == 0, done.stderr
    # RFC 9497 A.1.1 skSm
    assert done.stdout.split() == [
        "pure-python",
        "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e",
    ]


def test_one_machine_paths_allow_pure_python_only_without_libsodium() -> None:
    done = _without_libsodium(
        """
        import os
        from trust import group_backend
        said = []
        assert group_backend.allow_pure_python_on_one_machine(said.append)
        assert group_backend.allow_pure_python_on_one_machine(said.append)  # said once
        print(len(said), os.environ[group_backend.ALLOW_PURE_PYTHON_ENV], "NOT constant" in said[0])
        print(group_backend.selected().name)
        """,
        allow=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "True", "pure-python"]
    if HAS_LIBSODIUM:  # with the library present nothing is set and libsodium is used
        env = {k: v for k, v in os.environ.items() if k != group_backend.ALLOW_PURE_PYTHON_ENV}
        code = (
            "import os\nfrom trust import group_backend as g\n"
            "print(g.allow_pure_python_on_one_machine(), g.ALLOW_PURE_PYTHON_ENV in os.environ,"
            " g.selected().name)"
        )
        present = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert present.stdout.split() == ["False", "False", "libsodium"], present.stderr
