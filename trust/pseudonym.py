"""Patient pseudonyms: how nodes link one person across institutions without naming them.

``pseudonym = HMAC-SHA256(linkage_key, normalised national identifier)``, hex-encoded. Nodes hold
the regional linkage key; the coordinator and the consent registry never do, so they only ever
see pseudonyms.

The regional pseudonym stays between nodes, the registry and the record locator. What the
coordinator routes by is a *routing pseudonym* (:func:`routing_pseudonym`): one per patient and
pair of organisations, keyed by the linkage key, so the envelopes of one patient to different
recipients carry unrelated values and the coordinator, which holds regional pseudonyms in its
locator but not the key, cannot compute or link them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "normalise_identifier",
    "pseudonym",
    "load_or_create_linkage_key",
    "LINKAGE_KEY_BYTES",
    "IdentifierError",
    "check_gb11643",
    "routing_pseudonym",
    "oprf_input",
    "oprf_pseudonym",
    "pseudonym_key_version",
    "newest_key_version",
    "OPRF_PSEUDONYM_PATTERN",
]

LINKAGE_KEY_BYTES = 32


class IdentifierError(ValueError):
    """A national identifier is malformed (the message says how; it never quotes the value)."""


def normalise_identifier(value: str) -> str:
    """Case-fold, strip separators and whitespace, and write every decimal digit of any script
    as ASCII: ``' 123-45 6789 '``, ``'١٢٣٤٥٦٧٨٩'`` (Arabic-Indic) and ``'１２３４５６７８９'`` all
    become ``'123456789'``."""
    text = unicodedata.normalize("NFKC", value).casefold()
    out = []
    for ch in text:
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            out.append(str(digit))
        elif ch.isalnum():
            out.append(ch)
    return "".join(out)


_GB11643_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_GB11643_CHECK = "10x98765432"  # sum mod 11 → check character (x = roman ten), GB 11643-1999


def check_gb11643(value: str) -> str:
    """A PRC resident identity number (GB 11643-1999: 17 digits + ISO 7064 MOD 11-2 check
    character), normalised, or :class:`IdentifierError` saying what is wrong."""
    text = normalise_identifier(value)
    if len(text) != 18 or not text[:17].isdigit() or text[17] not in "0123456789x":
        raise IdentifierError("a resident identity number has 17 digits and a check digit or X")
    total = sum(int(d) * w for d, w in zip(text[:17], _GB11643_WEIGHTS, strict=True))
    if _GB11643_CHECK[total % 11] != text[17]:
        raise IdentifierError("the resident identity number's check digit is wrong (GB 11643)")
    return text


def pseudonym(linkage_key: bytes, national_id: str) -> str:
    if len(linkage_key) < 16:
        raise ValueError("linkage key too short")
    normalised = normalise_identifier(national_id)
    if not normalised:
        raise ValueError("empty national identifier")
    return hmac.new(linkage_key, normalised.encode(), hashlib.sha256).hexdigest()


_ROUTING_DOMAIN = b"ipjms-routing-pseudonym-v1"


def routing_pseudonym(linkage_key: bytes, regional: str, org_a: str, org_b: str) -> str:
    """The pseudonym an envelope between ``org_a`` and ``org_b`` carries for the patient whose
    regional pseudonym is ``regional``: ``HMAC-SHA256(linkage key, domain ‖ pair ‖ regional)``
    with the pair in sorted order, so both directions of one exchange (a referral and the
    task updates coming back) carry the same value and the coordinator can tell that an update
    belongs to an exchange, while the same patient's envelopes to another organisation carry
    an unrelated one."""
    if len(linkage_key) < 16:
        raise ValueError("linkage key too short")
    if not regional or org_a == org_b:
        raise ValueError("a routing pseudonym needs a pseudonym and two organisations")
    first, second = sorted((org_a, org_b))
    message = b"\x00".join((_ROUTING_DOMAIN, first.encode(), second.encode(), regional.encode()))
    return hmac.new(linkage_key, message, hashlib.sha256).hexdigest()


def load_or_create_linkage_key(path: Path | str) -> bytes:
    """Read the regional linkage key (hex in a 0600 file); create one if absent (demo/tests)."""
    path = Path(path)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(LINKAGE_KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


# --- pseudonyms from the authority's OPRF (trust/oprf.py, trust/oprf_service.py) ---------------

_OPRF_INPUT_DOMAIN = b"ipjms-patient-identifier-v1"
#: ``v<key version>.<64 hex>``: the version of the authority's key is part of the pseudonym
OPRF_PSEUDONYM_PATTERN = re.compile(r"^v([1-9][0-9]{0,5})\.([0-9a-f]{64})$")


def oprf_input(system: str, value: str) -> bytes:
    """What a node blinds for a patient: domain ‖ identifier system ‖ normalised value, so an
    SSN ``123-45-6789`` and a national id ``123456789`` are different inputs."""
    normalised = normalise_identifier(value)
    if not system or not normalised:
        raise IdentifierError("an identifier needs a system and a value")
    if "\x00" in system:
        raise IdentifierError("an identifier system holds no NUL character")
    return b"\x00".join((_OPRF_INPUT_DOMAIN, system.encode(), normalised.encode()))


def oprf_pseudonym(version: int, output: bytes) -> str:
    """The pseudonym form of an OPRF output under key ``version`` (the first 256 bits)."""
    if version < 1 or len(output) < 32:
        raise ValueError("an OPRF pseudonym needs a key version ≥ 1 and a 32-byte output")
    return f"v{version}.{output[:32].hex()}"


def pseudonym_key_version(value: str) -> int | None:
    """The key version an OPRF pseudonym names, or None for any other form."""
    m = OPRF_PSEUDONYM_PATTERN.match(value)
    return int(m.group(1)) if m else None


def newest_key_version(values: Iterable[str]) -> int:
    """The newest key version among ``values`` (0 when none names one: linkage-key pseudonyms,
    or no values) — what the record locator's publish keys on (issue 23)."""
    return max((pseudonym_key_version(v) or 0 for v in values), default=0)
