"""The plausibility validator (reference ranges as data) and reading extraction."""

from __future__ import annotations

from node.care.measures import problems, readings

from .fixtures import at, bp, definitions, obs, weight


def _problems(resource):
    return problems(resource, definitions().catalog)


def test_a_plausible_reading_has_no_problems():
    assert _problems(bp(186, 112, at())) == []
    assert _problems(weight(72.5, at())) == []
    assert _problems(obs("44260-8", 2, None, at())) == []


def test_systolic_900_is_implausible():
    got = _problems(bp(900, 80, at()))
    assert len(got) == 1
    path, message = got[0]
    assert path == "Observation.component[0].value"
    assert "900 is not a plausible value" in message and "40-300" in message


def test_a_non_ucum_unit_is_refused():
    got = _problems(bp(140, 90, at(), unit="mmHg"))  # UCUM is mm[Hg]
    assert [p for p, _ in got] == [
        "Observation.component[0].value.code",
        "Observation.component[1].value.code",
    ]
    assert "'mmHg' is not an accepted UCUM unit" in got[0][1]
    not_ucum = weight(70, at())
    not_ucum["valueQuantity"]["system"] = "http://example.org/units"
    assert "must be UCUM" in _problems(not_ucum)[0][1]


def test_an_uncoded_unit_is_read_as_its_text():
    uncoded = obs("8867-4", 70, "/min", at())
    uncoded["valueQuantity"] = {"value": 70, "unit": "/min"}
    assert _problems(uncoded) == []
    uncoded["valueQuantity"] = {"value": 70, "unit": "bpm"}
    assert "'bpm' is not an accepted UCUM unit" in _problems(uncoded)[0][1]


def test_units_convert_to_the_canonical_unit_before_the_range_check():
    assert _problems(obs("29463-7", 160, "[lb_av]", at())) == []  # 72.6 kg
    assert _problems(obs("29463-7", 1000, "[lb_av]", at()))  # 453 kg
    rows = readings([obs("2339-0", 90, "mg/dL", at())], definitions().catalog)
    assert [(r.measure, round(r.value, 2)) for r in rows] == [("glucose", 5.0)]


def test_score_out_of_range_and_uncatalogued_observations():
    assert _problems(obs("44260-8", 4, None, at()))  # PHQ-9 items are 0-3
    assert _problems(obs("12345-6", 99999, "kg", at())) == []  # not a care measure
    assert _problems({"resourceType": "Patient"}) == []


def test_readings_split_a_bp_panel_and_skip_non_final():
    draft = bp(150, 95, at(1))
    draft["status"] = "preliminary"
    rows = readings([bp(150, 95, at(0)), draft], definitions().catalog)
    assert sorted((r.measure, r.value) for r in rows) == [("diastolic", 95.0), ("systolic", 150.0)]
