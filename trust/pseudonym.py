"""Patient pseudonyms: how nodes link one person across institutions without naming them.

``pseudonym = HMAC-SHA256(linkage_key, normalised national identifier)``, hex-encoded. Nodes hold
the regional linkage key; the coordinator and the consent registry never do, so they only ever
see pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import unicodedata
from pathlib import Path

__all__ = ["normalise_identifier", "pseudonym", "load_or_create_linkage_key", "LINKAGE_KEY_BYTES"]

LINKAGE_KEY_BYTES = 32


def normalise_identifier(value: str) -> str:
    """Case-fold, strip separators and whitespace: ``' 123-45 6789 '`` → ``'123456789'``."""
    text = unicodedata.normalize("NFKC", value).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def pseudonym(linkage_key: bytes, national_id: str) -> str:
    if len(linkage_key) < 16:
        raise ValueError("linkage key too short")
    normalised = normalise_identifier(national_id)
    if not normalised:
        raise ValueError("empty national identifier")
    return hmac.new(linkage_key, normalised.encode(), hashlib.sha256).hexdigest()


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
