"""Canonical JSON: the one byte encoding of a JSON value that hashes and signatures cover.

Keys sorted, no insignificant whitespace, ASCII only (non-ASCII as ``\\uXXXX``), no NaN/Infinity.
Two equal values always encode to the same bytes, so a hash or signature over them is stable.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")
