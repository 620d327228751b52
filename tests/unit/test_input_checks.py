"""The edge's pure input checks (servicekit.input_checks) against Python's own JSON parser:
the byte-level scans must agree with what the parsed document holds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from servicekit.input_checks import (
    InputLimits,
    check_json_body,
    check_path,
    check_query,
    json_depth,
    text_problem,
)

LIMITS = InputLimits(max_json_depth=8, integer_params={"_offset": (0, 100)})
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _has_control(value: Any) -> bool:
    if isinstance(value, str):
        return text_problem(value + "x") is not None  # control characters only
    if isinstance(value, list):
        return any(_has_control(v) for v in value)
    if isinstance(value, dict):
        return any(_has_control(k) or _has_control(v) for k, v in value.items())
    return False


@settings(max_examples=300)
@given(_json, st.booleans())
def test_depth_and_control_characters_match_the_parsed_document(value: Any, ascii_: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_).encode()
    assert json_depth(raw) == _depth(value)
    problem = check_json_body(raw, "application/json", LIMITS)
    if _depth(value) > LIMITS.max_json_depth:
        assert problem is not None and "nested" in problem.diagnostics
    elif _has_control(value):
        assert problem is not None and "control" in problem.diagnostics
    else:
        assert problem is None


def test_escaped_backslash_before_u0000_is_text_not_a_control_character() -> None:
    assert check_json_body(rb'{"a": "\\u0000"}', "application/json", LIMITS) is None
    assert check_json_body(rb'{"a": "\\\u0000"}', "application/json", LIMITS) is not None


def test_encodings_other_than_utf8_are_415() -> None:
    body = json.dumps({"resourceType": "Patient"})
    for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-8-sig"):
        problem = check_json_body(body.encode(encoding), "application/json", LIMITS)
        assert problem is not None and problem.status == 415, encoding
    problem = check_json_body(body.encode(), "application/json; charset=latin-1", LIMITS)
    assert problem is not None and problem.status == 415


def test_query_limits() -> None:
    assert check_query(b"_offset=100&name=a,b", LIMITS) is None
    assert check_query(b"_offset=101", LIMITS) is not None
    assert check_query(b"_offset=99999999999999999999999", LIMITS) is not None
    assert check_query(b"_offset=x", LIMITS) is not None
    assert check_query(b"&".join([b"a=1"] * 65), LIMITS) is not None
    assert check_query(b"a=" + b",".join([b"v"] * 101), LIMITS) is not None
    assert check_query(b"&".join([b"a=" + b",".join([b"v"] * 100)] * 6), LIMITS) is not None


def test_dot_segments() -> None:
    assert check_path("/fhir/Patient/..") is not None
    assert check_path("/fhir/./Patient") is not None
    assert check_path("/fhir/Patient/a.b..c") is None
