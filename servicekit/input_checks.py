"""Limits on what a request may carry, as pure functions (no I/O): the rules behind
:mod:`servicekit.request_limits`, the one edge every HTTP app of IPJMS puts in front of its routes.

Each check returns ``None`` when the input is acceptable, or an :class:`InputProblem` (status and
a diagnostic that quotes no input: request values may be names or identifiers).

Why each limit exists (issue 13, finding 4): a 1,000-deep JSON array made ``json.loads`` and the
FHIR models raise ``RecursionError``; ``_offset=99999999999999999999999`` overflowed the SQLite
driver; 2,000 values in one search parameter (or 1,100 repetitions of one) exceeded SQLite's
limit on bound variables. Finding 7: UTF-16 bodies were decoded and stored (JSON between systems
must be UTF-8, RFC 8259 §8.1), strings with control characters were stored, and ``..``/``.``
path segments reached the routes as resource ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from urllib.parse import parse_qsl

__all__ = [
    "InputLimits",
    "InputProblem",
    "check_path",
    "check_query",
    "check_json_body",
    "json_depth",
    "text_problem",
]


@dataclass(frozen=True)
class InputLimits:
    """What one HTTP app accepts. Defaults fit every IPJMS service; apps set ``max_body_bytes``
    and the integer query parameters they read."""

    max_body_bytes: int = 256 * 1024
    #: nesting of JSON arrays/objects; a FHIR resource rarely passes 20 (Questionnaire items,
    #: contained resources in a Bundle entry), the FHIR models fail somewhere past 200
    max_json_depth: int = 64
    #: key=value pairs in a query string (repetitions of one name included)
    max_query_params: int = 64
    #: comma-separated values of one parameter (``code=a,b,c`` is 3), and of all together:
    #: each value becomes a bound variable or two in SQL (SQLite allows 32,766 per statement)
    max_values_per_param: int = 100
    max_query_values: int = 500
    max_query_bytes: int = 16 * 1024
    #: query parameters that must be integers, with their inclusive range
    integer_params: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class InputProblem:
    status: int
    diagnostics: str
    code: str = "invalid"


# --- path ---------------------------------------------------------------------------------------


def check_path(path: str) -> InputProblem | None:
    """No ``.`` or ``..`` segment: a client that does not normalise its URL would otherwise
    address a resource whose id is ``..`` (and any file-like use of ids would climb out)."""
    for segment in path.split("/"):
        if segment in (".", ".."):
            return InputProblem(400, "'.' and '..' are not allowed as path segments")
    return None


# --- query --------------------------------------------------------------------------------------


def check_query(query_string: bytes, limits: InputLimits) -> InputProblem | None:
    if not query_string:
        return None
    if len(query_string) > limits.max_query_bytes:
        return InputProblem(
            414, f"query string longer than {limits.max_query_bytes} bytes", "too-costly"
        )
    try:
        pairs = parse_qsl(
            query_string.decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=limits.max_query_params,
        )
    except ValueError:
        return InputProblem(
            400, f"more than {limits.max_query_params} query parameters", "too-costly"
        )
    total = 0
    for name, value in pairs:
        values = value.count(",") + 1
        if values > limits.max_values_per_param:
            return InputProblem(
                400,
                f"parameter {_name(name)} has more than {limits.max_values_per_param} values",
                "too-costly",
            )
        total += values
        bounds = limits.integer_params.get(name)
        if bounds is not None:
            problem = _integer_problem(name, value, bounds)
            if problem is not None:
                return problem
    if total > limits.max_query_values:
        return InputProblem(
            400, f"more than {limits.max_query_values} query values in all", "too-costly"
        )
    return None


def _name(name: str) -> str:
    # Parameter names are ours (FHIR search parameters), but a client may send anything.
    return repr(name[:40]) if re.fullmatch(r"[A-Za-z0-9_:.\-]{1,40}", name) else "(unnamed)"


def _integer_problem(name: str, value: str, bounds: tuple[int, int]) -> InputProblem | None:
    low, high = bounds
    text = value.strip()
    ok = re.fullmatch(r"[+-]?[0-9]{1,19}", text) is not None
    if ok and low <= int(text) <= high:
        return None
    return InputProblem(400, f"{name} must be an integer from {low} to {high}")


# --- body ---------------------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# A JSON escape of a control character (other than tab, line feed, carriage return): valid only
# when its backslash run is odd (``\\u0000`` is the text "\u0000", not a NUL).
_CONTROL_ESCAPE = re.compile(rb"(\\+)(?:u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])|u007[fF]|[bf])")
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in ``raw`` (JSON text), brackets inside strings
    ignored. Linear, and never recursive."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    return max(accumulate(_DEPTH_STEP[b] for b in brackets))


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def check_json_body(raw: bytes, content_type: str, limits: InputLimits) -> InputProblem | None:
    """Encoding, nesting and control characters of a request body (every body that is not a
    form: JSON is what the services read). Structure beyond that is each route's business."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _FORM_TYPES or not raw:
        return None
    charset = _charset(content_type)
    if charset not in (None, "utf-8", "utf8"):
        return InputProblem(415, "request bodies must be UTF-8 (RFC 8259)", "not-supported")
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4]:
        return InputProblem(
            415, "request bodies must be UTF-8 without a byte order mark", "not-supported"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return InputProblem(415, "request body is not valid UTF-8", "not-supported")
    depth = json_depth(raw)
    if depth > limits.max_json_depth:
        return InputProblem(
            400, f"JSON nested deeper than {limits.max_json_depth} levels", "too-costly"
        )
    if _has_control(raw):
        return InputProblem(
            400, "strings may not hold control characters (other than tab, CR and LF)"
        )
    return None


def _has_control(raw: bytes) -> bool:
    if raw.translate(None, _NOT_CONTROL):
        return True
    if b"\\" not in raw:
        return False
    return any(len(m.group(1)) % 2 == 1 for m in _CONTROL_ESCAPE.finditer(raw))


# --- text ---------------------------------------------------------------------------------------

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def text_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable text (FHIR ``string``: at least one non-whitespace
    character, no control characters but tab, CR, LF), or None."""
    if _CONTROL_CHARS.search(value):
        return "contains a control character"
    if not value.strip():
        return "is empty or only whitespace"
    return None
