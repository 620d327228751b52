"""FHIR ``string`` text rules in node.store.validation: a whitespace-only value or a control
character anywhere in a resource is a 400 naming each path (issue 19 builds the paths only for a
resource that has such a value; the answer must be the same)."""

from __future__ import annotations

import pytest

from node.store.validation import text_violations, validate_resource
from servicekit.outcome import BadRequest


def _condition(note: str, display: str = "Heart failure") -> dict:
    return {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007",
                             "display": display}]},
        "note": [{"text": "first"}, {"text": note}],
    }  # fmt: skip


def test_clean_text_passes_and_bad_text_is_named_by_path() -> None:
    assert validate_resource(_condition("second")) == "Condition"
    assert text_violations(_condition("second")) == []
    bad = _condition("   ", display="Heart\x01failure")
    assert text_violations(bad) == [
        ("Condition.code.coding[0].display", "contains a control character"),
        ("Condition.note[1].text", "is empty or only whitespace"),
    ]
    with pytest.raises(BadRequest) as err:
        validate_resource(bad)
    assert "Condition.note[1].text is empty or only whitespace" in str(err.value)
