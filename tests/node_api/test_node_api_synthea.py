"""Issue 2 must-show 2 over HTTP: every bundle of a Synthea export (the generated Synthea-shaped
one always, the real one where it is beside the repository) goes in through ``POST /fhir``,
per-type counts match the bundles, ``$everything`` returns each patient's whole record, and the
IPS examples are accepted as documents — on SQLite and PostgreSQL. Expected counts come from the
files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from node.ingest.sources import discover
from node_api.node_harness import Node

SHARED = {"Organization", "Practitioner"}


def _bundles(folder: Path) -> list[tuple[Path, dict]]:
    # discover() puts hospitalInformation*/practitionerInformation* first, as references need.
    return [(p, json.loads(p.read_text())) for p in discover([folder])]


def _types(bundle: dict) -> Counter[str]:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def _everything(node: Node, pid: str, headers: dict[str, str]) -> list[dict]:
    resources: list[dict] = []
    url: str | None = f"/fhir/Patient/{pid}/$everything?_count=100"
    while url:
        r = node.client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        resources += [e["resource"] for e in page.get("entry", [])]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = "/fhir/" + nxt[0].split("/fhir/", 1)[1] if nxt else None
    return resources


def test_synthea_bundles_over_http(node: Node, export_dir: Path) -> None:
    doc = node.login("doctor1")
    expected: Counter[str] = Counter()
    patients: dict[str, Counter[str]] = {}
    bundles = _bundles(export_dir)
    assert bundles[0][0].name.startswith(("hospitalInformation", "practitionerInformation"))
    for path, bundle in bundles:
        r = node.post("/fhir", bundle, doc)
        assert r.status_code == 200, (path.name, r.text[:500])
        response = r.json()
        assert response["type"] == "transaction-response"
        assert len(response["entry"]) == len(bundle["entry"])
        assert all(e["response"]["status"].startswith("201") for e in response["entry"])
        expected += _types(bundle)
        if not path.name.startswith(("hospital", "practitioner")):
            location = response["entry"][0]["response"]["location"]
            assert "Patient/" in location
            pid = location.split("Patient/", 1)[1].split("/")[0]
            patients[pid] = _types(bundle)
    assert node.store.counts() == dict(expected)
    assert len(patients) == sum(_types(b)["Patient"] for _p, b in bundles) > 0

    for pid, types in patients.items():
        record = _everything(node, pid, doc)
        got = Counter(r["resourceType"] for r in record)
        for rtype, n in types.items():
            if rtype not in SHARED:
                assert got[rtype] == n, (pid, rtype, got[rtype], n)
        assert got["Organization"] >= 1 and got["Practitioner"] >= 1
        assert len({(r["resourceType"], r["id"]) for r in record}) == len(record)
        # _type and _since are honoured.
        only = _everything_typed(node, pid, doc, "Condition,Encounter")
        assert Counter(r["resourceType"] for r in only) == Counter(
            {t: n for t, n in types.items() if t in ("Condition", "Encounter")}
        )


def _everything_typed(node: Node, pid: str, doc: dict[str, str], types: str) -> list[dict]:
    r = node.client.get(f"/fhir/Patient/{pid}/$everything?_type={types}&_count=1000", headers=doc)
    assert r.status_code == 200
    return [e["resource"] for e in r.json().get("entry", [])]


def test_everything_since_returns_only_newer(node: Node, export_dir: Path) -> None:
    doc = node.login("doctor1")
    for path, bundle in _bundles(export_dir)[:3]:
        assert node.post("/fhir", bundle, doc).status_code == 200, path.name
    pid = node.client.get("/fhir/Patient", headers=doc).json()["entry"][0]["resource"]["id"]
    record = _everything(node, pid, doc)
    obs = next(r for r in record if r["resourceType"] == "Observation")
    newest_before = max(r["meta"]["lastUpdated"] for r in record)
    obs["status"] = "amended"
    updated = node.put(f"/fhir/Observation/{obs['id']}", obs, doc).json()
    since = updated["meta"]["lastUpdated"]
    assert since > newest_before
    later = node.client.get(
        f"/fhir/Patient/{pid}/$everything", params={"_since": since}, headers=doc
    ).json()
    assert [e["resource"]["id"] for e in later.get("entry", [])] == [obs["id"]]
    assert later["total"] == 1


def test_ips_examples_accepted_as_documents(node: Node, ips_dir: Path) -> None:
    doc = node.login("doctor1")
    documents = sorted(ips_dir.glob("*.json"))
    assert documents, f"no IPS documents in {ips_dir}"
    for path in documents:
        document = json.loads(path.read_text())
        assert document["type"] == "document"
        r = node.post("/fhir/Bundle", document, doc)
        assert r.status_code == 201, (path.name, r.text[:500])
        stored = node.client.get(f"/fhir/Bundle/{r.json()['id']}", headers=doc).json()
        assert stored["type"] == "document"
        assert stored["entry"][0]["resource"]["resourceType"] == "Composition"
    assert node.store.counts() == {"Bundle": len(documents)}
