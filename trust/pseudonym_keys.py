"""The pseudonymisation authority's OPRF keys on disk: versioned and rotatable.

``<keys_dir>/v<N>.key`` holds version N's private scalar (hex, 0600); ``<keys_dir>/current``
names the version new pseudonyms are made under. Rotation adds version N+1 and makes it
current; older versions stay (a node re-pseudonymises a patient by asking for both, from the
identifier it holds) until ``retire`` removes one. The version is part of every pseudonym's form
(:func:`trust.pseudonym.oprf_pseudonym`), so a pseudonym names the key that made it.

A version *number* does not say which key: an authority whose key folder is lost would make a
new ``v1``. So each key has a fingerprint, :func:`key_fingerprint` — its public key ``k·G``
(what RFC 9497's VOPRF mode publishes anyway; recovering ``k`` from it is the discrete logarithm
problem), published with every answer so a node never mixes two keys under one number — and the
first key is made only for an authority that has never served (``has_served``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trust import oprf

__all__ = [
    "KeyRing",
    "load_key_ring",
    "key_fingerprint",
    "rotate",
    "retire",
    "KeyRingError",
]

_NAME = re.compile(r"^v([1-9][0-9]{0,5})\.key$")


class KeyRingError(ValueError):
    """A missing, malformed or unknown key version (the message names which)."""


@dataclass(frozen=True)
class KeyRing:
    current: int
    keys: dict[int, bytes]

    def key(self, version: int | None) -> tuple[int, bytes]:
        v = self.current if version is None else version
        if v not in self.keys:
            known = ", ".join(str(k) for k in sorted(self.keys))
            raise KeyRingError(f"key version {v} is not held (held: {known})")
        return v, self.keys[v]

    def fingerprints(self) -> dict[int, str]:
        return {v: key_fingerprint(sk) for v, sk in self.keys.items()}


def key_fingerprint(sk: bytes) -> str:
    """What names a key without revealing it: its public key ``k·G`` (64 hex digits)."""
    return oprf.public_key(sk).hex()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read(keys_dir: Path) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for path in keys_dir.glob("v*.key"):
        m = _NAME.match(path.name)
        if not m:
            continue
        try:
            sk = bytes.fromhex(path.read_text().strip())
            oprf.public_key(sk)  # a valid, reduced, non-zero scalar
        except (ValueError, oprf.OprfError) as exc:
            raise KeyRingError(f"{path.name}: not an OPRF key ({exc})") from None
        keys[int(m.group(1))] = sk
    return keys


def load_key_ring(
    keys_dir: Path | str, *, create: bool = True, has_served: bool = False
) -> KeyRing:
    """The key ring in ``keys_dir``; with ``create``, version 1 is made when there is none —
    unless the authority ``has_served`` (its database holds audit entries or budgets): then its
    key folder was lost, and a new key would silently change every pseudonym in the region."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = _read(keys_dir)
    if not keys:
        if not create:
            raise KeyRingError(f"no OPRF key in {keys_dir}")
        if has_served:
            raise KeyRingError(
                f"the OPRF key folder {keys_dir} is missing or empty, but this authority's "
                "database shows it has served before: restore the folder from its backup. No "
                "new key is made — it would silently give every patient new pseudonyms under "
                "the same version number (a new region needs a new database as well)"
            )
        _write_secret(keys_dir / "v1.key", oprf.random_key().hex())
        (keys_dir / "current").write_text("1\n")
        keys = _read(keys_dir)
    current_file = keys_dir / "current"
    current = int(current_file.read_text().strip()) if current_file.exists() else max(keys)
    if current not in keys:
        raise KeyRingError(f"'current' names version {current}, whose key file is missing")
    return KeyRing(current, keys)


def rotate(keys_dir: Path | str) -> int:
    """Add a new key version and make it current; returns its number."""
    keys_dir = Path(keys_dir)
    ring = load_key_ring(keys_dir, create=False)  # a missing folder is an error, not a new v1
    new = max(ring.keys) + 1
    _write_secret(keys_dir / f"v{new}.key", oprf.random_key().hex())
    tmp = keys_dir / "current.tmp"
    tmp.write_text(f"{new}\n")
    tmp.replace(keys_dir / "current")
    return new


def retire(keys_dir: Path | str, version: int) -> None:
    """Delete an old version's key (never the current one): its pseudonyms can no longer be
    re-derived, by anyone."""
    keys_dir = Path(keys_dir)
    ring = load_key_ring(keys_dir, create=False)
    if version == ring.current:
        raise KeyRingError("the current key version cannot be retired; rotate first")
    ring.key(version)
    (keys_dir / f"v{version}.key").unlink()
