"""$everything parameters, the idempotent-ingest rule and the pure date/index functions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from conftest import version_rows

from node.store import FhirStore, idempotent_transaction
from node.store.dates import MAX_DT, parse_date_range, period_range
from node.store.search_index import extract_index_rows, normalise_string
from servicekit.outcome import BadRequest, Forbidden, NotFound


def _record(store: FhirStore) -> dict[str, Any]:
    org = store.create({"resourceType": "Organization", "name": "Clinic"}).resource["id"]
    doc = store.create({"resourceType": "Practitioner", "name": [{"family": "Who"}]}).resource["id"]
    pid = store.create(
        {"resourceType": "Patient", "managingOrganization": {"reference": f"Organization/{org}"}}
    ).resource["id"]
    other = store.create({"resourceType": "Patient"}).resource["id"]
    enc = store.create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"individual": {"reference": f"Practitioner/{doc}"}}],
        }
    ).resource["id"]
    obs = [
        store.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"o{i}"},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{enc}"},
            }
        ).resource
        for i in range(3)
    ]
    store.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "not mine"},
            "subject": {"reference": f"Patient/{other}"},
        }
    )
    return {"org": org, "doc": doc, "pid": pid, "other": other, "enc": enc, "obs": obs}


def test_everything_types_since_and_paging(store: FhirStore) -> None:
    r = _record(store)
    everything = store.everything(r["pid"])
    keys = [f"{x['resourceType']}/{x['id']}" for x in everything.resources]
    assert keys[0] == f"Patient/{r['pid']}"
    assert set(keys) == {
        f"Patient/{r['pid']}",
        f"Encounter/{r['enc']}",
        *(f"Observation/{o['id']}" for o in r["obs"]),
        f"Organization/{r['org']}",
        f"Practitioner/{r['doc']}",
    }
    assert everything.total == 7
    only = store.everything(r["pid"], types=["Observation", "Organization"])
    assert {x["resourceType"] for x in only.resources} == {"Observation", "Organization"}
    assert only.total == 4
    pages = [store.everything(r["pid"], count=3, offset=o) for o in (0, 3, 6)]
    assert [len(p.resources) for p in pages] == [3, 3, 1]
    assert [f"{x['resourceType']}/{x['id']}" for p in pages for x in p.resources] == keys
    # _since: only what changed at or after the instant
    cut = r["obs"][2]["meta"]["lastUpdated"]
    since = store.everything(r["pid"], since=cut)
    assert f"Observation/{r['obs'][2]['id']}" in {
        f"{x['resourceType']}/{x['id']}" for x in since.resources
    }
    assert all(x["meta"]["lastUpdated"] >= cut for x in since.resources)
    assert since.total < everything.total
    with pytest.raises(BadRequest, match="_since"):
        store.everything(r["pid"], since="last tuesday")
    with pytest.raises(BadRequest, match="Spaceship"):
        store.everything(r["pid"], types=["Spaceship"])
    with pytest.raises(Forbidden):
        store.everything(r["pid"], compartment_patient=r["other"])
    with pytest.raises(NotFound):
        store.everything("nobody")


def test_idempotent_ingest_rule(store: FhirStore) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:p",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:9", "value": "a+b|c"}],
                },
            },
            {
                "fullUrl": "urn:uuid:o",
                "resource": {
                    "resourceType": "Observation",
                    "id": "src-1",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:p"},
                },
            },
        ],
    }
    tx = idempotent_transaction(bundle)
    assert tx["type"] == "transaction"
    assert tx["entry"][0]["request"]["method"] == "POST"
    assert "ifNoneExist" in tx["entry"][0]["request"]
    assert tx["entry"][1]["request"] == {"method": "PUT", "url": "Observation/src-1"}
    store.ingest_bundle(bundle)
    counts, versions = store.counts(), version_rows(store)
    store.ingest_bundle(bundle)
    assert store.counts() == counts == {"Observation": 1, "Patient": 1}
    assert version_rows(store) == versions
    pid = store.search("Patient", [("identifier", "urn:oid:9|a+b|c")]).resources[0]["id"]
    assert store.read("Observation", "src-1")["subject"] == {"reference": f"Patient/{pid}"}
    with pytest.raises(BadRequest, match="history"):
        idempotent_transaction({"resourceType": "Bundle", "type": "history"})


def test_dates_are_ranges() -> None:
    assert parse_date_range("2020") == (datetime(2020, 1, 1), datetime(2021, 1, 1))
    assert parse_date_range("2020-02") == (datetime(2020, 2, 1), datetime(2020, 3, 1))
    assert parse_date_range("2020-12-31") == (datetime(2020, 12, 31), datetime(2021, 1, 1))
    assert parse_date_range("2020-05-01T10:00:00+02:00") == (
        datetime(2020, 5, 1, 8),
        datetime(2020, 5, 1, 8, 0, 1),
    )
    assert parse_date_range("2020-05-01T10:00:00.5Z")[0] == datetime(2020, 5, 1, 10, 0, 0, 500000)
    for bad in ("2020-13", "2020-02-30", "20", "2020-01-01T25:00", "yesterday"):
        with pytest.raises(ValueError):
            parse_date_range(bad)
    assert period_range({"start": "2020"}) == (datetime(2020, 1, 1), MAX_DT)
    assert period_range({}) is None


def test_index_rows_of_a_resource() -> None:
    rows = extract_index_rows(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}, {"code": "x"}]},
            "subject": {"reference": "https://node/fhir/Patient/p1"},
            "performer": [{"reference": "Patient/p2"}, {"reference": "#c"}],
            "effectivePeriod": {"start": "2020-01-01", "end": "2020-01-02"},
            "valueQuantity": {"value": 5.5, "system": "http://unitsofmeasure.org", "code": "mg"},
        },
        base_url="https://node/fhir",
    )
    assert ("code", "http://loinc.org", "1-8") in rows.token and ("code", "", "x") in rows.token
    assert ("status", "", "final") in rows.token
    assert ("patient", "Patient", "p1") in rows.reference
    assert ("performer", "Patient", "p2") in rows.reference
    assert {r for r in rows.reference if r[0] == "_compartment"} == {
        ("_compartment", "Patient", "p1"),
        ("_compartment", "Patient", "p2"),
    }
    assert rows.date == [("date", datetime(2020, 1, 1), datetime(2020, 1, 3))]
    assert rows.quantity == [("value-quantity", "http://unitsofmeasure.org", "mg", 5.5)]
    assert normalise_string("  Ñúñez  García ") == "nunez garcia"
