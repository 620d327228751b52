"""Must-show 1 and 3: every indicator against hand-computed values on a fixed cohort (no
noise), and only patients whose consent permits HQUALIMP count."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from indicator_cohort import AS_OF, EXPECTED, EXPECTED_STRATA, PERIOD, cohort, consented

from federated.indicators import IndicatorError, default_indicators, load_indicators, tally
from federated.indicators.counting import age_band
from federated.indicators.node_answer import load_patients

DEFS = default_indicators()


@pytest.fixture(scope="module")
def exact():
    return tally(consented(), DEFS, DEFS.ids(), PERIOD, AS_OF)


@pytest.mark.parametrize("indicator", sorted(EXPECTED))
def test_indicator_matches_hand_computed_value(exact, indicator: str) -> None:
    cell = exact.get(indicator)
    assert (cell.numerator, cell.denominator) == EXPECTED[indicator]


def test_every_defined_indicator_is_checked() -> None:
    assert set(EXPECTED) == set(DEFS.ids())


@pytest.mark.parametrize("key", sorted(EXPECTED_STRATA))
def test_strata_cells_match_hand_computed_values(exact, key) -> None:
    cell = exact.get(*key)
    assert (cell.numerator, cell.denominator) == EXPECTED_STRATA[key]


def test_every_cell_of_the_vocabulary_is_present_even_when_empty(exact) -> None:
    for ind in DEFS.indicators:
        for dim in ind.dimensions():
            for value in DEFS.values(dim):
                assert (ind.id, dim, value) in exact.cells


def test_readmission_needs_its_thirty_days_to_have_passed() -> None:
    # as of 2026-03-01 only P1's first stay (discharged 01-15) has had its 30 days
    march = datetime(2026, 3, 1, tzinfo=UTC)
    cell = tally(consented(), DEFS, ["readmission-30d-all"], PERIOD, march).get(
        "readmission-30d-all"
    )
    assert (cell.numerator, cell.denominator) == (1, 1)


def test_contribution_cap_limits_units_per_patient() -> None:
    ind = DEFS.get("readmission-30d-all")
    capped = replace(DEFS, indicators=(replace(ind, contribution_cap=1),))
    one = tally(consented(), capped, [ind.id], PERIOD, AS_OF)
    assert (one.get(ind.id).numerator, one.get(ind.id).denominator) == (2, 2)


def test_only_consented_patients_count(tmp_path: Path) -> None:
    data = tmp_path / "patients.json"
    data.write_text(json.dumps(cohort()))
    loaded = list(load_patients({"source": "json", "indicator-data": str(data)}))
    assert sorted(p[0]["id"] for p in loaded) == ["p1", "p2", "p3"]
    via_source = tally(loaded, DEFS, DEFS.ids(), PERIOD, AS_OF)
    everyone = tally([r["resources"] for r in cohort()], DEFS, DEFS.ids(), PERIOD, AS_OF)
    for ind in DEFS.ids():
        got = via_source.get(ind)
        assert (got.numerator, got.denominator) == EXPECTED[ind]
    # the non-consenting patient would have changed the counts: the filter is what kept it out
    assert everyone.get("readmission-30d-all").denominator == 6
    assert via_source.patients == 3 and everyone.patients == 4


def test_age_bands() -> None:
    on = datetime(2026, 6, 30, tzinfo=UTC).date()
    assert age_band(datetime(2008, 7, 1).date(), on) == "0-17"
    assert age_band(datetime(2008, 6, 30).date(), on) == "18-44"
    assert age_band(datetime(1951, 7, 1).date(), on) == "65-74"
    assert age_band(None, on) == "unknown"


def test_every_indicator_names_its_guideline_source() -> None:
    for ind in DEFS.indicators:
        assert ind.source["guideline"] and ind.source["edition"]


def test_bad_definition_file_is_refused_with_the_indicator_named(tmp_path: Path) -> None:
    doc = json.loads(Path("federated/indicators/definitions.json").read_text())
    doc["indicators"][0]["count"] = "guesswork"
    bad = tmp_path / "defs.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(IndicatorError, match="readmission-30d-all.*guesswork"):
        load_indicators(bad)
    doc["indicators"][0]["count"] = "readmission"
    doc["indicators"][0]["source"] = {"guideline": ""}
    bad.write_text(json.dumps(doc))
    with pytest.raises(IndicatorError, match="source"):
        load_indicators(bad)
