"""The FHIR REST API over HTTP: create/read/update/delete/history, ETag/If-Match, search paging,
bad input (issue 2 must-show 3) — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from node_api.node_harness import FHIR, Node, make_node, outcome_text


def patient(n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": f"MRN-{n}"}],
        "name": [{"family": f"Family{n}", "given": ["Given"]}],
        "gender": "female",
        "birthDate": "1950-01-0" + str(1 + n % 9),
        **extra,
    }


def observation(patient_id: str, day: int, code: str = "8867-4", value: float = 72) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2024-03-{day:02d}T10:00:00+00:00",
        "valueQuantity": {
            "value": value,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def test_create_read_update_history_delete(node: Node) -> None:
    doc = node.login("doctor1")
    r = node.post("/fhir/Patient", patient(), doc)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(FHIR)
    created = r.json()
    pid = created["id"]
    assert r.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert r.headers["ETag"] == 'W/"1"' and r.headers["Last-Modified"].endswith("GMT")

    r = node.client.get(f"/fhir/Patient/{pid}", headers=doc)
    assert r.status_code == 200 and r.json()["name"][0]["family"] == "Family1"
    assert r.headers["ETag"] == 'W/"1"'
    assert (
        node.client.get(
            f"/fhir/Patient/{pid}", headers={**doc, "If-None-Match": 'W/"1"'}
        ).status_code
        == 304
    )

    changed = {**r.json(), "gender": "male"}
    r = node.put(f"/fhir/Patient/{pid}", changed, {**doc, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"2"' and r.json()["meta"]["versionId"] == "2"
    # A stale If-Match loses: 412 and nothing changes.
    stale = node.put(
        f"/fhir/Patient/{pid}", {**changed, "gender": "other"}, {**doc, "If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412, stale.text
    assert outcome_text(stale)
    assert node.client.get(f"/fhir/Patient/{pid}", headers=doc).json()["gender"] == "male"

    assert (
        node.client.get(f"/fhir/Patient/{pid}/_history/1", headers=doc).json()["gender"] == "female"
    )
    hist = node.client.get(f"/fhir/Patient/{pid}/_history", headers=doc).json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]

    r = node.client.delete(f"/fhir/Patient/{pid}", headers=doc)
    assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome"
    assert node.client.get(f"/fhir/Patient/{pid}", headers=doc).status_code == 410
    hist = node.client.get(f"/fhir/Patient/{pid}/_history", headers=doc).json()
    assert hist["total"] == 3 and hist["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in hist["entry"][0]


def test_conditional_create_with_if_none_exist(node: Node) -> None:
    doc = node.login("doctor1")
    cond = {"If-None-Exist": "identifier=urn:test:mrn|MRN-7"}
    first = node.post("/fhir/Patient", patient(7), doc, extra=cond)
    second = node.post("/fhir/Patient", patient(7), doc, extra=cond)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert node.store.counts().get("Patient") == 1


def test_search_paging_links_cover_every_match_once(node: Node) -> None:
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(), doc).json()["id"]
    for day in range(1, 8):
        assert node.post("/fhir/Observation", observation(pid, day), doc).status_code == 201
    node.post("/fhir/Observation", observation(pid, 9, code="718-7"), doc)  # other code
    seen: list[str] = []
    url: str | None = f"/fhir/Observation?patient={pid}&code=http://loinc.org|8867-4&_count=3"
    pages = 0
    while url:
        r = node.client.get(url, headers=doc)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["type"] == "searchset" and page["total"] == 7
        links = {link["relation"]: link["url"] for link in page["link"]}
        query = parse_qs(urlsplit(links["self"]).query)
        assert query["_count"] == ["3"] and query["patient"] == [pid]
        if pages > 0:
            assert "previous" in links
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        pages += 1
        url = links.get("next")
        if url:
            url = url.split("://", 1)[1].split("/", 1)[1]
            url = "/" + url
    assert pages == 3 and len(seen) == 7 == len(set(seen))
    r = node.client.get(
        f"/fhir/Observation?patient={pid}&date=ge2024-03-05&_sort=-date", headers=doc
    ).json()
    dates = [e["resource"]["effectiveDateTime"][:10] for e in r["entry"]]
    assert dates == sorted(dates, reverse=True) and min(dates) >= "2024-03-05"


def _unchanged(node: Node, before: dict[str, int]) -> None:
    assert node.store.counts() == before


def test_bad_input_is_refused_and_changes_nothing(node: Node) -> None:
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(), doc).json()["id"]
    before = node.store.counts()

    r = node.post("/fhir/Patient", '{"resourceType": "Patient", ', doc)
    assert r.status_code == 400 and "JSON" in outcome_text(r)
    _unchanged(node, before)

    r = node.post("/fhir/Patient", {"resourceType": "Patient", "gender": 12, "birthDate": "x"}, doc)
    assert r.status_code == 400 and "Patient" in outcome_text(r)
    _unchanged(node, before)

    r = node.post("/fhir/Observation", patient(), doc)
    assert r.status_code == 400 and "does not match" in outcome_text(r)

    r = node.put(f"/fhir/Patient/{pid}", {**patient(), "id": "someone-else"}, doc)
    assert r.status_code == 400 and "id" in outcome_text(r)

    missing_ref = observation("does-not-exist", 1)
    r = node.post("/fhir/Observation", missing_ref, doc)
    assert 400 <= r.status_code < 500 and "does-not-exist" in outcome_text(r)
    _unchanged(node, before)

    good = {
        "fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
        "resource": patient(2),
        "request": {"method": "POST", "url": "Patient"},
    }
    bad = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",  # Observation.code is required and missing
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    txn = {"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]}
    r = node.post("/fhir", txn, doc)
    assert r.status_code == 400 and "Observation.code" in outcome_text(r)
    _unchanged(node, before)

    r = node.client.get("/fhir/Observation?colour=blue", headers=doc)
    assert r.status_code == 400 and "colour" in outcome_text(r)

    r = node.post("/fhir", {"resourceType": "Bundle", "type": "document", "entry": []}, doc)
    assert r.status_code == 400 and "transaction or batch" in outcome_text(r)

    r = node.client.post(
        "/fhir/Patient", content=b"<Patient/>", headers={**doc, "Content-Type": "application/xml"}
    )
    assert r.status_code == 415 and outcome_text(r)
    _unchanged(node, before)


@pytest.fixture
def small_node(db_url: str, tmp_path: Path) -> Iterator[Node]:
    yield from make_node(db_url, tmp_path / "small", max_request_bytes=4096)


def test_oversize_requests_refused_and_nothing_stored(small_node: Node) -> None:
    node = small_node
    doc = node.login("doctor1")
    big = patient()
    big["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 8000 + "</div>",
    }
    r = node.post("/fhir/Patient", big, doc)
    assert r.status_code == 413 and "exceeds" in outcome_text(r)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed length is counted
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    r = node.client.post("/fhir/Patient", content=chunks(), headers={**doc, "Content-Type": FHIR})
    assert r.status_code == 413 and "exceeds" in outcome_text(r)
    assert node.store.counts().get("Patient", 0) == 0
    assert node.post("/fhir/Patient", patient(), doc).status_code == 201


def test_metrics_count_route_templates_without_ids(node: Node) -> None:
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(), doc).json()["id"]
    node.client.get(f"/fhir/Patient/{pid}", headers=doc)
    node.client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "doctor1", "password": "wrong password"},
    )
    text = node.client.get("/metrics").text
    assert 'route="/fhir/{rtype}/{rid}"' in text
    assert (
        'ipjms_node_login_failures_total{grant_type="password",reason="bad_credentials"} 1.0'
        in text
    )
    assert pid not in text and "MRN-1" not in text


def test_healthz_and_unknown_route(node: Node) -> None:
    assert node.client.get("/healthz").status_code == 200
    r = node.client.get("/nothing-here")
    assert r.status_code == 404 and outcome_text(r)
