"""Password hashing profiles (argon2id), each with the source that recommends it.

A service's settings name a profile; hashes are self-describing (the encoded argon2 string
carries its parameters), so changing the profile needs no migration: stored hashes still verify,
and :func:`needs_rehash` tells the caller to re-hash on the next successful login.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher

__all__ = ["HashProfile", "PROFILES", "ProfileName", "password_hasher", "unknown_user_hash"]

ProfileName = Literal["rfc9106-low-memory", "owasp-minimum"]


@dataclass(frozen=True)
class HashProfile:
    time_cost: int
    memory_kib: int
    parallelism: int
    source: str


PROFILES: dict[str, HashProfile] = {
    # The default of every service: ~0.2 CPU-s per hash on this project's 2-core machine.
    "rfc9106-low-memory": HashProfile(
        3, 64 * 1024, 4, "RFC 9106 §4, second recommended option (argon2id, t=3, 64 MiB, p=4)"
    ),
    # Seven times cheaper (~0.03 CPU-s): what a single machine running a whole region (the demo,
    # `ipjms up`, the tests' regions) uses, so enrolling 90 patients does not take minutes.
    "owasp-minimum": HashProfile(
        2,
        19 * 1024,
        1,
        "OWASP Password Storage Cheat Sheet, argon2id minimum (t=2, 19 MiB, p=1)",
    ),
}


def password_hasher(profile: str) -> PasswordHasher:
    """The argon2id hasher of a named profile; an unknown name is a ``ValueError``."""
    try:
        p = PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown password-hash profile {profile!r}; one of {', '.join(PROFILES)}"
        ) from None
    return PasswordHasher(
        time_cost=p.time_cost, memory_cost=p.memory_kib, parallelism=p.parallelism
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")  # argon2's encoding: no padding


def unknown_user_hash(hasher: PasswordHasher) -> str:
    """An encoded argon2 hash to verify a login against when the username is unknown, so that
    answer takes as long as a known user's wrong password: it carries ``hasher``'s type and
    parameters (verifying recomputes argon2 with exactly those), a random salt and a random
    digest of its lengths, so no password verifies against it.

    Built without hashing: hashing a throw-away password for it cost every service start one
    argon2 computation (~0.2 CPU-s at the default profile)."""
    return (
        f"$argon2{hasher.type.name.lower()}$v=19"
        f"$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
        f"${_b64(os.urandom(hasher.salt_len))}${_b64(os.urandom(hasher.hash_len))}"
    )
