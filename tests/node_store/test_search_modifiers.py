"""Token ``:text``, ``:in`` / ``:not-in`` and Observation composite parameters (issue 17): each
result set is computed from the seeded resources by a plain Python predicate, on SQLite and
PostgreSQL; what stays unsupported is refused with a BadRequest naming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from node.store import FhirStore
from node.store.search_index import normalise_string
from servicekit.outcome import BadRequest

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYSTOLIC, DIASTOLIC, HEART_RATE = "8480-6", "8462-4", "8867-4"


def _quantity(value: float, code: str = "mm[Hg]") -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def _coding(code: str, display: str | None = None) -> dict[str, Any]:
    return {"system": LOINC, "code": code, **({"display": display} if display else {})}


def _seed() -> list[dict[str, Any]]:
    """Readings whose code words, codes and values differ in the ways the searches tell apart."""
    bp = [(120, 80), (150, 95), (135, 140)]  # the last: a diastolic above the systolic (typo)
    readings: list[dict[str, Any]] = [
        {
            "code": {"text": "Blood pressure", "coding": [_coding("85354-9", "BP panel")]},
            "component": [
                {"code": {"coding": [_coding(SYSTOLIC)]}, "valueQuantity": _quantity(s)},
                {"code": {"coding": [_coding(DIASTOLIC)]}, "valueQuantity": _quantity(d)},
            ],
        }
        for s, d in bp
    ]
    readings += [
        {
            "code": {"coding": [_coding(HEART_RATE, "Heart rate")]},
            "valueQuantity": _quantity(v, "/min"),
        }
        for v in (55, 72, 110)
    ]
    readings.append(
        {
            "code": {"coding": [_coding(SYSTOLIC, "Systolic blood pressure")]},
            "valueQuantity": _quantity(142),
        }
    )
    readings.append({"code": {"text": "Héart sounds"}, "valueString": "normal"})  # accent
    return [{"resourceType": "Observation", "status": "final", **r} for r in readings]


@pytest.fixture
def seeded(store: FhirStore) -> list[dict[str, Any]]:
    pid = store.create({"resourceType": "Patient"}).resource["id"]
    out = []
    for body in _seed():
        body["subject"] = {"reference": f"Patient/{pid}"}
        out.append(store.create(body).resource)
    return out


def _ids(store: FhirStore, *params: tuple[str, str]) -> set[str]:
    result = store.search("Observation", [*params, ("_count", "100")])
    return {r["id"] for r in result.resources}


def _where(seeded: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {r["id"] for r in seeded if test(r)}


def _words(obs: dict[str, Any]) -> list[str]:
    code = obs["code"]
    texts = [code.get("text")] + [c.get("display") for c in code.get("coding", [])]
    return [normalise_string(t) for t in texts if t]


def _codes(concept: dict[str, Any]) -> set[str]:
    return {c["code"] for c in concept.get("coding", [])}


def test_token_text_searches_the_codes_words(store: FhirStore, seeded: list[dict]) -> None:
    for query in ("heart", "HEART", "blood", "bp pan", "systolic blood", "pressure"):
        want = _where(
            seeded,
            lambda o, q=normalise_string(query): any(w.startswith(q) for w in _words(o)),
        )
        assert _ids(store, ("code:text", query)) == want, query
    assert len(_ids(store, ("code:text", "heart"))) == 4  # three heart rates and the accented one
    assert _ids(store, ("code:text", "pressure")) == set()  # starts-with, like a string search
    # OR within a parameter, AND with others
    either = _ids(store, ("code:text", "heart,bp"))
    assert either == _ids(store, ("code:text", "heart")) | _ids(store, ("code:text", "bp"))
    hr_high = _ids(store, ("code:text", "heart"), ("value-quantity", "gt100"))
    assert hr_high == _where(
        seeded, lambda o: "heart rate" in _words(o) and o["valueQuantity"]["value"] > 100
    )
    with pytest.raises(BadRequest, match="title:text"):
        store.search("Composition", [("title:text", "x")])  # :text is for tokens


def test_code_value_quantity(store: FhirStore, seeded: list[dict]) -> None:
    for query, code, bound in (
        (f"{LOINC}|{HEART_RATE}$gt60", HEART_RATE, 60),
        (f"{HEART_RATE}$gt100", HEART_RATE, 100),
        (f"{LOINC}|{SYSTOLIC}$gt140", SYSTOLIC, 140),
    ):
        want = _where(
            seeded,
            lambda o, c=code, b=bound: (
                c in _codes(o["code"]) and "valueQuantity" in o and o["valueQuantity"]["value"] > b
            ),
        )
        assert want and _ids(store, ("code-value-quantity", query)) == want, query
    # two values: OR of the pairs
    both = _ids(store, ("code-value-quantity", f"{HEART_RATE}$lt60,{SYSTOLIC}$gt140"))
    assert both == _ids(store, ("code-value-quantity", f"{HEART_RATE}$lt60")) | _ids(
        store, ("code-value-quantity", f"{SYSTOLIC}$gt140")
    )
    assert len(both) == 2


def test_component_code_value_quantity_matches_within_one_component(
    store: FhirStore, seeded: list[dict]
) -> None:
    def within(code: str, test: Callable[[float], bool]) -> set[str]:
        return _where(
            seeded,
            lambda o: any(
                code in _codes(c["code"]) and test(c["valueQuantity"]["value"])
                for c in o.get("component", [])
            ),
        )

    for query, code, test in (
        (f"{LOINC}|{SYSTOLIC}$gt130", SYSTOLIC, lambda v: v > 130),
        (f"{SYSTOLIC}$gt130", SYSTOLIC, lambda v: v > 130),
        (f"{DIASTOLIC}$gt100", DIASTOLIC, lambda v: v > 100),
        (f"{DIASTOLIC}$le80", DIASTOLIC, lambda v: v <= 80),
        (f"{LOINC}|{DIASTOLIC}$gt90|{UCUM}|mm[Hg]", DIASTOLIC, lambda v: v > 90),
    ):
        want = within(code, test)
        assert want and _ids(store, ("component-code-value-quantity", query)) == want, query
    # the pair is one component's: diastolic > 130 is only the third panel, although the AND of
    # component-code and component-value-quantity also finds the second (its systolic is 150)
    assert len(_ids(store, ("component-code-value-quantity", f"{DIASTOLIC}$gt130"))) == 1
    loose = _ids(store, ("component-code", DIASTOLIC), ("component-value-quantity", "gt130"))
    assert len(loose) == 2
    assert _ids(store, ("component-code-value-quantity", f"http://other|{DIASTOLIC}$gt0")) == set()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ([("code-value-quantity", f"{HEART_RATE}")], "code-value-quantity"),  # no $value
        ([("code-value-quantity", f"{HEART_RATE}$gt1$x")], "code-value-quantity"),
        ([("code-value-quantity", f"{HEART_RATE}$big")], "value-quantity"),
        ([("code-value-quantity:missing", "true")], "code-value-quantity:missing"),
        ([("component-code-value-quantity:exact", "x$1")], "component-code-value-quantity"),
        ([("code:below", LOINC)], "code:below"),
        ([("code:above", LOINC)], "code:above"),
        ([("_sort", "code-value-quantity")], "code-value-quantity"),
    ],
)
def test_unsupported_forms_are_refused(
    store: FhirStore, params: list[tuple[str, str]], named: str
) -> None:
    with pytest.raises(BadRequest, match=named.replace("$", r"\$")):
        store.search("Observation", params)


# --- :in / :not-in against ValueSets the node holds ------------------------------------------

BP_VS = "http://example.org/fhir/ValueSet/bp-codes"
HR_VS = "http://example.org/fhir/ValueSet/heart-rate"


def _value_set(url: str, **content: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "status": "active", **content}


def _pairs(obs: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c.get("system", ""), c["code"]) for c in obs["code"].get("coding", [])}


@pytest.fixture
def value_sets(store: FhirStore) -> dict[str, dict[str, Any]]:
    """One ValueSet by compose enumeration (the BP panel and systolic codes, plus a code in
    another system that shares a code with LOINC's heart rate), one by expansion (nested)."""
    bp = _value_set(
        BP_VS,
        compose={
            "include": [
                {"system": LOINC, "concept": [{"code": "85354-9"}, {"code": SYSTOLIC}]},
                {"system": "http://other", "concept": [{"code": HEART_RATE}]},
            ]
        },
    )
    hr = _value_set(
        HR_VS,
        # compose names a code the expansion does not hold: the expansion wins
        compose={"include": [{"system": LOINC, "concept": [{"code": SYSTOLIC}]}]},
        expansion={
            "timestamp": "2026-01-01T00:00:00Z",
            "contains": [
                {
                    "system": LOINC,
                    "abstract": True,
                    "contains": [{"system": LOINC, "code": HEART_RATE}],
                },
            ],
        },
    )
    return {"bp": store.create(bp).resource, "hr": store.create(hr).resource}


def test_in_and_not_in_match_the_value_sets_codes(
    store: FhirStore, seeded: list[dict], value_sets: dict[str, dict]
) -> None:
    bp_codes = {(LOINC, "85354-9"), (LOINC, SYSTOLIC), ("http://other", HEART_RATE)}
    in_bp = _where(seeded, lambda o: bool(_pairs(o) & bp_codes))
    in_hr = _where(seeded, lambda o: (LOINC, HEART_RATE) in _pairs(o))
    assert len(in_bp) == 4 and len(in_hr) == 3  # three panels + the systolic; three heart rates
    assert _ids(store, ("code:in", BP_VS)) == in_bp
    assert _ids(store, ("code:in", f"ValueSet/{value_sets['bp']['id']}")) == in_bp
    assert _ids(store, ("code:in", HR_VS)) == in_hr  # from the (nested) expansion, not compose
    assert _ids(store, ("code:in", f"{BP_VS},{HR_VS}")) == in_bp | in_hr  # OR
    everything = {r["id"] for r in seeded}
    assert _ids(store, ("code:not-in", BP_VS)) == everything - in_bp  # incl. the code-less one
    assert _ids(store, ("code:not-in", HR_VS), ("code:not-in", BP_VS)) == (
        everything - in_bp - in_hr
    )
    # AND with other parameters; a version-qualified canonical
    assert _ids(store, ("code:in", HR_VS), ("value-quantity", "gt100")) == _where(
        seeded, lambda o: o["id"] in in_hr and o["valueQuantity"]["value"] > 100
    )
    bp = value_sets["bp"]
    store.update("ValueSet", bp["id"], {**bp, "version": "2"})
    assert _ids(store, ("code:in", f"{BP_VS}|2")) == in_bp
    # component codes are a token parameter too
    assert _ids(store, ("component-code:in", HR_VS)) == set()
    assert _ids(store, ("component-code:in", BP_VS)) == _where(seeded, lambda o: "component" in o)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (
            {
                "compose": {
                    "include": [
                        {
                            "system": LOINC,
                            "filter": [{"property": "concept", "op": "is-a", "value": "x"}],
                        }
                    ]
                }
            },
            "filter",
        ),
        ({"compose": {"include": [{"valueSet": [HR_VS]}]}}, "only valueSet"),
        ({"compose": {"include": [{"system": LOINC}]}}, "no concept list"),
        (
            {
                "compose": {
                    "include": [{"system": LOINC, "concept": [{"code": SYSTOLIC}]}],
                    "exclude": [{"system": LOINC, "concept": [{"code": DIASTOLIC}]}],
                }
            },
            "exclude",
        ),
        ({}, "neither an expansion nor compose"),
    ],
)
def test_in_refuses_value_sets_it_cannot_expand(
    store: FhirStore, content: dict[str, Any], why: str
) -> None:
    url = "http://example.org/fhir/ValueSet/unexpandable"
    store.create(_value_set(url, **content))
    for key in ("code:in", "code:not-in"):
        with pytest.raises(BadRequest, match=f"{key}={url}: .*{why}"):
            store.search("Observation", [(key, url)])


def test_in_refuses_unknown_and_ambiguous_value_sets(
    store: FhirStore, value_sets: dict[str, dict]
) -> None:
    for ref in ("http://example.org/nope", "ValueSet/nope", f"{BP_VS}|9"):
        with pytest.raises(BadRequest, match="code:in=.*no (such )?ValueSet"):
            store.search("Observation", [("code:in", ref)])
    store.create(
        _value_set(HR_VS, compose={"include": [{"system": LOINC, "concept": [{"code": "x"}]}]})
    )
    with pytest.raises(BadRequest, match="more than one ValueSet"):
        store.search("Observation", [("code:in", HR_VS)])
    with pytest.raises(BadRequest, match="code:in"):  # not resolved inside a chain
        store.search("DiagnosticReport", [("result.code:in", BP_VS)])
    with pytest.raises(BadRequest, match="value-quantity:in"):  # tokens only
        store.search("Observation", [("value-quantity:in", BP_VS)])
