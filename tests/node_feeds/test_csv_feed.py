"""CSV lab/vital-sign feeds: documented columns → Observations; bad rows name file, line and
column; a file is stored whole or not at all; loading it twice adds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.feeds.csv_feed import (
    CSV_OBSERVATION_SYSTEM,
    CsvFeedError,
    csv_text_to_bundle,
    load_csv_file,
)
from node.feeds.fhir_validation import validate_bundle
from node.identity import NATIONAL_ID_SYSTEM
from node.store import FhirStore, migrate
from servicekit.outcome import FhirError
from servicekit.storage import make_engine

HEADER = "patient_identifier_system,patient_identifier,loinc,value,unit,effective_datetime"
GOOD = f"""{HEADER},encounter_identifier
{NATIONAL_ID_SYSTEM},1000000000009,2345-7,128,mg/dL,2025-03-14T08:15:00+01:00,
{NATIONAL_ID_SYSTEM},1000000000009,8480-6,142,mm[Hg],2025-03-14T08:20:00Z,
{NATIONAL_ID_SYSTEM},1000000000009,33914-3,48,mL/min/{{1.73_m2}},2025-03-14,
{NATIONAL_ID_SYSTEM},1000000000009,29463-7,81.5,kg,2025-03-14T08:20:00Z,V77
"""


def test_good_file_becomes_observations() -> None:
    bundle = csv_text_to_bundle(GOOD, source="lab.csv")
    assert validate_bundle(bundle) == 4
    glucose, systolic, egfr, weight = (e["resource"] for e in bundle["entry"])
    assert glucose["code"]["coding"][0]["code"] == "2345-7"
    assert glucose["valueQuantity"] == {
        "value": 128,
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    }
    assert glucose["category"][0]["coding"][0]["code"] == "laboratory"
    assert systolic["category"][0]["coding"][0]["code"] == "vital-signs"
    assert glucose["subject"] == {
        "reference": f"Patient?identifier={NATIONAL_ID_SYSTEM}|1000000000009"
    }
    assert egfr["effectiveDateTime"] == "2025-03-14"
    assert weight["valueQuantity"]["value"] == 81.5
    assert weight["encounter"] == {"reference": "Encounter?identifier=V77"}
    for entry in bundle["entry"]:
        ident = entry["resource"]["identifier"][0]
        assert ident["system"] == CSV_OBSERVATION_SYSTEM
        assert (
            entry["request"]["ifNoneExist"]
            == f"identifier={CSV_OBSERVATION_SYSTEM}|{ident['value']}"
        )
    # the identifier is derived from the row, so the same file gives the same Bundle
    assert csv_text_to_bundle(GOOD, source="lab.csv") == bundle


def row(**changes: str) -> str:
    values = {
        "patient_identifier_system": NATIONAL_ID_SYSTEM,
        "patient_identifier": "1000000000009",
        "loinc": "2345-7",
        "value": "128",
        "unit": "mg/dL",
        "effective_datetime": "2025-03-14T08:15:00+01:00",
    }
    values.update(changes)
    return ",".join(values[c] for c in HEADER.split(","))


@pytest.mark.parametrize(
    ("line", "column", "fragment"),
    [
        (row(value="12x"), "value", "not a decimal number"),
        (row(value=""), "value", "is empty"),
        (row(loinc="2345-8"), "loinc", "check digit"),
        (row(unit="mmol/L"), "unit", "not the UCUM unit for LOINC 2345-7 (mg/dL)"),
        (row(loinc="600-7", unit="mg dL"), "unit", "not a UCUM code"),
        (row(effective_datetime="2025-03-14T08:15:00"), "effective_datetime", "no UTC offset"),
        (row(effective_datetime="2025-02-30"), "effective_datetime", "not a valid date"),
        (row(effective_datetime="14/03/2025"), "effective_datetime", "not an ISO 8601"),
        (row(patient_identifier_system="national"), "patient_identifier_system", "absolute URI"),
        (row(loinc="85354-9", unit="mm[Hg]"), "loinc", "panel"),
    ],
)
def test_bad_row_names_file_line_and_column(line: str, column: str, fragment: str) -> None:
    text = f"{HEADER}\n{row()}\n{line}\n"
    with pytest.raises(CsvFeedError) as caught:
        csv_text_to_bundle(text, source="lab.csv")
    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.column) == ("lab.csv", 3, column)
    assert fragment in problem.reason
    assert f"lab.csv:3: column '{column}'" in str(caught.value)


def test_header_problems_and_duplicates() -> None:
    with pytest.raises(CsvFeedError, match="lab.csv:1: column 'colour': unknown column"):
        csv_text_to_bundle(f"{HEADER},colour\n{row()},red\n", source="lab.csv")
    with pytest.raises(CsvFeedError, match="column 'unit': required column is missing"):
        csv_text_to_bundle(HEADER.replace(",unit", "") + "\n", source="lab.csv")
    with pytest.raises(CsvFeedError, match="lab.csv:3: duplicates line 2"):
        csv_text_to_bundle(f"{HEADER}\n{row()}\n{row(value='130')}\n", source="lab.csv")
    with pytest.raises(CsvFeedError, match="more fields than header"):
        csv_text_to_bundle(f"{HEADER}\n{row()},extra\n", source="lab.csv")
    with pytest.raises(CsvFeedError, match="no data rows"):
        csv_text_to_bundle(f"{HEADER}\n\n", source="lab.csv")
    with pytest.raises(CsvFeedError, match="empty"):
        csv_text_to_bundle("", source="lab.csv")


def test_every_bad_row_is_reported() -> None:
    text = "\n".join([HEADER, row(value="a"), row(), row(unit="x", loinc="2339-0")]) + "\n"
    with pytest.raises(CsvFeedError) as caught:
        csv_text_to_bundle(text, source="f.csv")
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, "value"), (4, "unit")]


@pytest.fixture
def store(db_url: str) -> FhirStore:
    engine = make_engine(db_url)
    migrate(engine)
    store = FhirStore(engine)
    store.create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": "1000000000009"}],
        }
    )
    store.create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "identifier": [{"system": "urn:example:visits", "value": "V77"}],
        }
    )
    return store


def test_file_into_store_is_idempotent_and_all_or_nothing(store: FhirStore, tmp_path: Path) -> None:
    path = tmp_path / "lab.csv"
    path.write_text(GOOD, encoding="utf-8")
    store.transaction(load_csv_file(path))
    counts = store.counts()
    assert counts["Observation"] == 4
    patient_id = store.search("Patient", []).resources[0]["id"]
    glucose = store.search(
        "Observation", [("patient", patient_id), ("code", "http://loinc.org|2345-7")]
    )
    assert glucose.total == 1
    assert glucose.resources[0]["subject"]["reference"] == f"Patient/{patient_id}"
    weight = store.search("Observation", [("code", "http://loinc.org|29463-7")]).resources[0]
    assert weight["encounter"]["reference"].startswith("Encounter/")

    store.transaction(load_csv_file(path))  # the same file again
    assert store.counts() == counts

    # a file whose last row names an unknown patient: the store refuses it, nothing is stored
    unknown = tmp_path / "more.csv"
    unknown.write_text(
        f"{HEADER}\n{row(loinc='2339-0', value='140')}\n{row(patient_identifier='999')}\n",
        encoding="utf-8",
    )
    with pytest.raises(FhirError):
        store.transaction(load_csv_file(unknown))
    assert store.counts() == counts


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(HEADER.encode() + b"\n\xff\xfe\n")
    with pytest.raises(CsvFeedError, match="latin.csv:1: not UTF-8"):
        load_csv_file(path)
