"""Synthea exports (the generated Synthea-shaped one always, the real one where it is beside the
repository) and the IPS example documents through the store. Every expected count is computed
from the files themselves."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import load_json, synthea_files, version_rows

from node.store import FhirStore


def _entry_counts(bundle: dict) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def _has_patient(bundle: dict) -> bool:
    return any(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"])


def _distinct_ids(files: list[Path], rtype: str) -> int:
    return len(
        {
            e["resource"]["id"]
            for path in files
            for e in load_json(path)["entry"]
            if e["resource"]["resourceType"] == rtype
        }
    )


def test_every_synthea_bundle_loads_by_transaction(store: FhirStore, export_dir: Path) -> None:
    files = synthea_files(export_dir)
    assert sorted(files) == sorted(export_dir.glob("*.json"))  # every file, support files first
    assert files[0].name.startswith("hospitalInformation")
    expected: Counter[str] = Counter()
    patients: dict[str, tuple[dict, set[str]]] = {}
    for path in files:
        bundle = load_json(path)
        response = store.transaction(bundle)
        assert response["type"] == "transaction-response"
        assert len(response["entry"]) == len(bundle["entry"])
        assert all(e["response"]["status"] == "201 Created" for e in response["entry"])
        expected += _entry_counts(bundle)
        locations = {"/".join(e["response"]["location"].split("/")[:2]) for e in response["entry"]}
        patient_locs = [loc for loc in locations if loc.startswith("Patient/")]
        if patient_locs:
            patients[patient_locs[0].split("/")[1]] = (bundle, locations)
    assert store.counts() == dict(expected)

    # $everything returns each patient's whole record: every resource of its bundle
    assert len(patients) == sum(_has_patient(load_json(p)) for p in files) > 0
    for pid, (bundle, locations) in patients.items():
        everything = store.everything(pid)
        got = {f"{r['resourceType']}/{r['id']}" for r in everything.resources}
        assert everything.total == len(bundle["entry"])
        assert got == locations
        assert everything.resources[0]["resourceType"] == "Patient"


def test_ingest_twice_adds_nothing(store: FhirStore, export_dir: Path) -> None:
    files = synthea_files(export_dir)
    for path in files:
        store.ingest_bundle(load_json(path))
    counts, versions = store.counts(), version_rows(store)
    # source ids are kept: the patients' Organization/Practitioner entries are the same rows as
    # the hospital/practitioner bundles' ones (one row per distinct id over all files)
    for rtype in ("Organization", "Practitioner", "Patient"):
        assert counts[rtype] == _distinct_ids(files, rtype) > 0, rtype
    assert counts["Patient"] == sum(_has_patient(load_json(p)) for p in files)
    for path in files:
        response = store.ingest_bundle(load_json(path))
        assert {e["response"]["status"] for e in response["entry"]} == {"200 OK"}
    assert store.counts() == counts
    # An unchanged resource gets no new version. The only resources that change are the
    # Organization/Practitioner copies inside patient bundles, which differ from the hospital
    # bundle's copy (no utilisation extensions): in the second pass, each copy that differs
    # from the one stored just before it makes one new version.
    by_id: dict[str, list[dict]] = {}
    for path in files:
        for e in load_json(path)["entry"]:
            by_id.setdefault(e["resource"]["id"], []).append(e["resource"])
    flips = 0
    for copies in by_id.values():
        stored = copies[-1]  # what the first pass left
        for copy in copies:
            flips += copy != stored
            stored = copy
    assert flips > 0  # both exports carry such differing copies, so the rule is exercised
    assert version_rows(store) == versions + flips
    # ingesting the last file again changes nothing at all
    store.ingest_bundle(load_json(files[-1]))
    assert version_rows(store) == versions + flips
    # ids from the source survive, so the source's urn:uuid references resolve to them
    bundle = load_json(files[2])
    patient = bundle["entry"][0]["resource"]
    assert store.read("Patient", patient["id"])["name"] == patient["name"]


def test_ips_documents_are_accepted_as_bundles(store: FhirStore, ips_dir: Path) -> None:
    docs = sorted(ips_dir.glob("*.json"))
    assert docs, f"no IPS documents in {ips_dir}"
    for path in docs:
        doc = load_json(path)
        out = store.create(doc)
        assert out.status == 201
        stored = store.read("Bundle", out.resource["id"])
        assert stored["type"] == "document"
        assert stored["entry"] == doc["entry"]  # the document is kept verbatim
    found = store.search("Bundle", [("type", "document")])
    assert found.total == len(docs)
    # idempotent ingest of a document: one Bundle, however often it arrives (the creates above
    # were plain POSTs, so ingest adds one more Bundle, once)
    for _ in range(2):
        store.ingest_bundle(load_json(docs[0]))
    assert store.counts()["Bundle"] == len(docs) + 1
