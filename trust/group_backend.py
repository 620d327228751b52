"""Which ristretto255 implementation :mod:`trust.oprf` uses — decided here and nowhere else.

* **libsodium** (``crypto_core_ristretto255_*`` through ``pysodium``, constant time) whenever the
  system library is installed: the production path, and the only one Compose, Helm and the
  Dockerfile use (the image ships libsodium).
* **pure Python** (:mod:`trust.ristretto255`) only when libsodium is absent *and* the environment
  allows it with ``IPJMS_OPRF_ALLOW_PURE_PYTHON=1``. Python's big integers are **not constant
  time**, so a key holder on this path leaks timing about its OPRF key; ``ipjms demo``,
  ``ipjms up`` and the test suite (tests/conftest.py) set the permission themselves, only where
  libsodium is missing (:func:`allow_pure_python_on_one_machine`).
* otherwise :class:`GroupUnavailableError`, naming the package to install and the setting.

``pysodium`` is imported only after ``ctypes.util.find_library`` has found libsodium: without
the library its import calls ``ctypes.cdll.LoadLibrary(None)`` and fails obscurely.

Both implementations expose the same byte-level operations with libsodium's semantics, except
one rule applied here to libsodium too: an encoding with bit 255 set is refused (RFC 9496
§4.3.1: the integer must be below p); libsodium 1.0.18 ignores that bit.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from trust import ristretto255

__all__ = [
    "ALLOW_PURE_PYTHON_ENV",
    "GroupError",
    "GroupUnavailableError",
    "RistrettoGroup",
    "LibsodiumGroup",
    "PurePythonGroup",
    "libsodium_available",
    "selected",
    "allow_pure_python_on_one_machine",
]

ALLOW_PURE_PYTHON_ENV = "IPJMS_OPRF_ALLOW_PURE_PYTHON"
GroupError = ristretto255.GroupError

_INSTALL_HINT = (
    "the OPRF pseudonyms need the system libsodium (constant-time ristretto255), which was not "
    "found. Install it — Debian/Ubuntu: apt-get install libsodium23; Fedora: dnf install "
    "libsodium; macOS: brew install libsodium — or, for a one-machine demo or test only, set "
    f"{ALLOW_PURE_PYTHON_ENV}=1 to use the pure-Python group (trust/ristretto255.py, NOT constant "
    "time: it leaks timing about the OPRF key)"
)


class GroupUnavailableError(RuntimeError):
    """No usable ristretto255 implementation: libsodium is missing and pure Python not allowed."""


class RistrettoGroup(Protocol):
    """The operations trust/oprf.py needs (libsodium's names without the prefix)."""

    name: str
    constant_time: bool

    def is_valid_point(self, element: bytes) -> bool: ...
    def from_hash(self, uniform: bytes) -> bytes: ...
    def scalarmult(self, scalar: bytes, element: bytes) -> bytes: ...
    def scalarmult_base(self, scalar: bytes) -> bytes: ...
    def scalar_reduce(self, wide: bytes) -> bytes: ...
    def scalar_invert(self, scalar: bytes) -> bytes: ...
    def scalar_random(self) -> bytes: ...


def _top_bit_set(element: bytes) -> bool:
    return len(element) == 32 and element[31] & 0x80 != 0


class PurePythonGroup:
    """trust/ristretto255.py: correct, portable, not constant time."""

    name = "pure-python"
    constant_time = False
    is_valid_point = staticmethod(ristretto255.is_valid_point)
    from_hash = staticmethod(ristretto255.from_hash)
    scalarmult = staticmethod(ristretto255.scalarmult)
    scalarmult_base = staticmethod(ristretto255.scalarmult_base)
    scalar_reduce = staticmethod(ristretto255.scalar_reduce)
    scalar_invert = staticmethod(ristretto255.scalar_invert)
    scalar_random = staticmethod(ristretto255.scalar_random)


class LibsodiumGroup:
    """libsodium through pysodium; its ``ValueError`` failures become :class:`GroupError`."""

    name = "libsodium"
    constant_time = True

    def __init__(self) -> None:
        self._na = _load_pysodium()

    def is_valid_point(self, element: bytes) -> bool:
        if len(element) != 32 or _top_bit_set(element):
            return False
        return bool(self._na.crypto_core_ristretto255_is_valid_point(element))

    def from_hash(self, uniform: bytes) -> bytes:
        return self._call("crypto_core_ristretto255_from_hash", uniform)

    def scalarmult(self, scalar: bytes, element: bytes) -> bytes:
        if _top_bit_set(element):
            raise GroupError("not a canonical ristretto255 encoding")
        return self._call("crypto_scalarmult_ristretto255", scalar, element)

    def scalarmult_base(self, scalar: bytes) -> bytes:
        return self._call("crypto_scalarmult_ristretto255_base", scalar)

    def scalar_reduce(self, wide: bytes) -> bytes:
        return self._call("crypto_core_ristretto255_scalar_reduce", wide)

    def scalar_invert(self, scalar: bytes) -> bytes:
        return self._call("crypto_core_ristretto255_scalar_invert", scalar)

    def scalar_random(self) -> bytes:
        return self._call("crypto_core_ristretto255_scalar_random")

    def _call(self, function: str, *args: bytes) -> bytes:
        try:
            return bytes(getattr(self._na, function)(*args))
        except ValueError as exc:  # pysodium raises a bare ValueError on libsodium's -1
            raise GroupError(f"{function} refused its input") from exc


def _find_libsodium() -> str | None:
    return ctypes.util.find_library("sodium") or ctypes.util.find_library("libsodium")


def _load_pysodium() -> ModuleType:
    if _find_libsodium() is None:
        raise GroupUnavailableError(_INSTALL_HINT)
    try:
        import pysodium  # noqa: PLC0415 — only once the library is known to be there
    except (OSError, ValueError, AttributeError) as exc:
        raise GroupUnavailableError(f"{_INSTALL_HINT} (loading it failed: {exc})") from exc
    if not hasattr(pysodium.sodium, "crypto_core_ristretto255_from_hash"):
        raise GroupUnavailableError(f"{_INSTALL_HINT} (the installed one predates 1.0.18)")
    return pysodium


def libsodium_available() -> bool:
    """Whether the system libsodium (with ristretto255) loads."""
    try:
        _load_pysodium()
    except GroupUnavailableError:
        return False
    return True


def _pure_python_allowed() -> bool:
    return os.environ.get(ALLOW_PURE_PYTHON_ENV, "").strip().lower() in {"1", "true", "yes"}


@functools.cache
def selected() -> RistrettoGroup:
    """The group this process uses (decided once): libsodium, else pure Python if allowed."""
    try:
        return LibsodiumGroup()
    except GroupUnavailableError:
        if _pure_python_allowed():
            return PurePythonGroup()
        raise


def allow_pure_python_on_one_machine(announce: Callable[[str], object] = print) -> bool:
    """For ``ipjms demo``/``up`` and the test suite: allow pure Python iff libsodium is missing.

    Sets ``IPJMS_OPRF_ALLOW_PURE_PYTHON=1`` in this process's environment (inherited by the
    pseudonym authority and the nodes it starts) and announces it once through ``announce``.
    Returns whether the pure-Python group is in use. Never called by a deployed service.
    """
    if libsodium_available():
        return False
    if not _pure_python_allowed():
        os.environ[ALLOW_PURE_PYTHON_ENV] = "1"
        announce(
            "libsodium not found: the OPRF pseudonyms use the pure-Python ristretto255 group "
            "(trust/ristretto255.py) — NOT constant time, for a one-machine demo only; "
            "install libsodium (apt-get install libsodium23 / dnf install libsodium / "
            "brew install libsodium) for the constant-time group"
        )
    return True
