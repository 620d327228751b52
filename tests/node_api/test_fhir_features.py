"""The FHIR API's request features (issue 17): nothing silently ignored (``_format``/Accept,
``_pretty``, ``_summary``, ``_elements``, ``Prefer``, ``If-Modified-Since``, search parameters
on a create, ``/fhir/`` transactions), the search features (POST ``_search``, chains, ``_has``,
``_revinclude``, ``_include=*``, ``_sort`` on strings and tokens, ``ap``), PATCH, conditional
update/delete, ``$everything`` by POST with ``start``/``end``, and referential integrity on
delete — each with its bad input refused (4xx, nothing changed). One node (SQLite) per module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from node_api.node_harness import FHIR, PASSWORD, Node, make_node, outcome_text


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from make_node(None, tmp_path_factory.mktemp("features") / "node")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def doc(fx: Node) -> dict[str, str]:
    return fx.login("doctor1")


@pytest.fixture(scope="module")
def data(fx: Node, doc: dict[str, str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    org = fx.post("/fhir/Organization", {"resourceType": "Organization", "name": "Clinic"}, doc)
    ids["org"] = org.json()["id"]
    for name, given in (("Zeta", "Ann"), ("Alpha", "Bob"), ("Mu", "Cy")):
        body = {
            "resourceType": "Patient",
            "name": [{"family": name, "given": [given]}],
            "gender": "female",
            "birthDate": "1960-05-05",
            "text": {
                "status": "generated",
                "div": f"<div xmlns='http://www.w3.org/1999/xhtml'>{name}</div>",
            },
            "managingOrganization": {"reference": f"Organization/{ids['org']}"},
            "identifier": [{"system": "urn:mrn", "value": name}],
        }
        r = fx.post("/fhir/Patient", body, doc)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    for day, code in ((1, "8867-4"), (20, "8867-4"), (25, "9279-1")):
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{ids['Zeta']}"},
            "effectiveDateTime": f"2024-03-{day:02d}T10:00:00+00:00",
            "valueQuantity": {
                "value": 70 + day if code == "8867-4" else 18,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
        r = fx.post("/fhir/Observation", obs, doc)
        assert r.status_code == 201, r.text
        ids[f"obs{day}"] = r.json()["id"]
    fx.app.state.auth.accounts.add_user("zeta", PASSWORD, "patient", patient_id=ids["Zeta"])
    fx.app.state.auth.accounts.add_user("alpha", PASSWORD, "patient", patient_id=ids["Alpha"])
    return ids


def _ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    }


def test_format_accept_and_pretty(fx: Node, doc: dict[str, str], data: dict[str, str]) -> None:
    pid = data["Zeta"]
    for query, headers in (
        ("?_format=xml", {}),
        ("?_format=application/fhir%2Bxml", {}),
        ("", {"Accept": "application/fhir+xml"}),
        ("", {"Accept": "text/html"}),
    ):
        r = fx.client.get(f"/fhir/Patient/{pid}{query}", headers={**doc, **headers})
        assert r.status_code == 406, (query, headers)
        assert "XML is not implemented" in outcome_text(r)
    ok = fx.client.get(f"/fhir/Patient/{pid}?_format=json", headers=doc)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith(FHIR)
    both = {**doc, "Accept": "application/fhir+xml;q=0.9, application/fhir+json"}
    assert fx.client.get(f"/fhir/Patient/{pid}", headers=both).status_code == 200
    pretty = fx.client.get(f"/fhir/Patient/{pid}?_pretty=true", headers=doc)
    assert pretty.text.startswith("{\n  ") and pretty.json()["id"] == pid
    assert fx.client.get(f"/fhir/Patient/{pid}?_pretty=yes", headers=doc).status_code == 400
    assert fx.client.get("/fhir/metadata?_format=xml").status_code == 406


def test_summary_and_elements(fx: Node, doc: dict[str, str], data: dict[str, str]) -> None:
    pid = data["Zeta"]
    summary = fx.client.get(f"/fhir/Patient/{pid}?_summary=true", headers=doc).json()
    assert "text" not in summary and summary["name"] and summary["birthDate"]
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    text = fx.client.get(f"/fhir/Patient/{pid}?_summary=text", headers=doc).json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data_only = fx.client.get(f"/fhir/Patient/{pid}?_summary=data", headers=doc).json()
    assert "text" not in data_only and "gender" in data_only
    elements = fx.client.get(f"/fhir/Patient/{pid}?_elements=name,gender", headers=doc).json()
    assert set(elements) == {"resourceType", "id", "meta", "name", "gender"}
    full = fx.client.get(f"/fhir/Patient/{pid}?_summary=false", headers=doc).json()
    assert "text" in full and "tag" not in full["meta"]
    # a choice element by its base name, in a search
    # (the fixture's three Observations by id: other tests of the module may add to Zeta's)
    obs_ids = ",".join(data[f"obs{day}"] for day in (1, 20, 25))
    obs = fx.client.get(
        f"/fhir/Observation?subject=Patient/{pid}&_id={obs_ids}&_elements=value", headers=doc
    ).json()
    assert obs["total"] == 3
    assert all(
        set(e["resource"]) == {"resourceType", "id", "meta", "valueQuantity"} for e in obs["entry"]
    )
    # bad input: named, 400
    for query, named in (
        ("_elements=nosuch", "nosuch"),
        ("_elements=", "_elements"),
        ("_summary=maybe", "maybe"),
        ("_summary=count", "count"),  # searches only
        ("_summary=true&_elements=name", "not both"),
        ("foo=bar", "foo"),  # a read takes no search parameters
    ):
        r = fx.client.get(f"/fhir/Patient/{pid}?{query}", headers=doc)
        assert r.status_code == 400 and named in outcome_text(r), query
    # the fixture's three patients (other tests of the module create patients too)
    three = ",".join(data[name] for name in ("Zeta", "Alpha", "Mu"))
    count = fx.client.get(f"/fhir/Patient?_id={three}&_summary=count", headers=doc).json()
    assert count["total"] == 3 and "entry" not in count


def test_prefer_return_and_if_modified_since(fx: Node, doc: dict[str, str]) -> None:
    body = {"resourceType": "Patient", "name": [{"family": "Prefer"}]}
    minimal = fx.post("/fhir/Patient", body, doc, extra={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["Location"] and minimal.headers["Preference-Applied"] == "return=minimal"
    pid = minimal.headers["Location"].split("/Patient/")[1].split("/")[0]
    oo = fx.post("/fhir/Patient", body, doc, extra={"Prefer": "return=OperationOutcome"})
    assert oo.json()["resourceType"] == "OperationOutcome"
    bad = fx.post("/fhir/Patient", body, doc, extra={"Prefer": "return=everything"})
    assert bad.status_code == 400
    read = fx.client.get(f"/fhir/Patient/{pid}", headers=doc)
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=1), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert (
        fx.client.get(
            f"/fhir/Patient/{pid}", headers={**doc, "If-Modified-Since": later}
        ).status_code
        == 304
    )
    assert (
        fx.client.get(
            f"/fhir/Patient/{pid}", headers={**doc, "If-Modified-Since": earlier}
        ).status_code
        == 200
    )
    assert (
        fx.client.get(
            f"/fhir/Patient/{pid}", headers={**doc, "If-Modified-Since": "last tuesday"}
        ).status_code
        == 400
    )
    assert read.status_code == 200


def test_create_with_search_parameters_is_conditional(fx: Node, doc: dict[str, str]) -> None:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:cc", "value": "once"}]}
    codes = [
        fx.post("/fhir/Patient?identifier=urn:cc|once", body, doc).status_code for _ in range(3)
    ]
    assert codes == [201, 200, 200]
    assert fx.client.get("/fhir/Patient?identifier=urn:cc|once", headers=doc).json()["total"] == 1
    both = fx.post(
        "/fhir/Patient?identifier=urn:cc|once",
        body,
        doc,
        extra={"If-None-Exist": "identifier=urn:cc|once"},
    )
    assert both.status_code == 400
    unknown = fx.post("/fhir/Patient?nosuch=1", body, doc)
    assert unknown.status_code == 400 and "nosuch" in outcome_text(unknown)


def test_trailing_slash_transaction(fx: Node, doc: dict[str, str]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": "Slash"}]},
            }
        ],
    }
    r = fx.client.post(
        "/fhir/",
        content=json.dumps(bundle),
        headers={**doc, "Content-Type": FHIR},
        follow_redirects=False,
    )
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"


def test_search_features(fx: Node, doc: dict[str, str], data: dict[str, str]) -> None:
    zeta = data["Zeta"]

    def search(query: str, headers: dict[str, str] = doc) -> dict[str, Any]:
        r = fx.client.get(f"/fhir/{query}", headers=headers)
        assert r.status_code == 200, (query, r.text)
        return r.json()

    # POST _search = GET
    r = fx.client.post("/fhir/Patient/_search", data={"family": "Zeta"}, headers=doc)
    assert r.status_code == 200 and _ids(r.json()) == {f"Patient/{zeta}"}
    # chain, one level, with and without the type
    assert len(_ids(search("Observation?subject:Patient.name=zeta"))) == 3
    assert len(_ids(search("Observation?subject.family=Zeta&code=9279-1"))) == 1
    assert _ids(search("Observation?subject:Patient.name=alpha")) == set()
    # _has
    assert _ids(search("Patient?_has:Observation:subject:code=9279-1")) == {f"Patient/{zeta}"}
    assert _ids(search("Patient?_has:Observation:subject:code=0000-0")) == set()
    # _revinclude, _include=*
    rev = search(f"Patient?_id={zeta}&_revinclude=Observation:subject")
    assert _ids(rev) == {f"Patient/{zeta}"} and len(_ids(rev, "include")) == 3
    star = search(f"Patient?_id={zeta}&_include=*")
    assert _ids(star, "include") == {f"Organization/{data['org']}"}
    # _sort on a string and a token
    names = [
        e["resource"]["name"][0]["family"]
        for e in search("Patient?_sort=family&identifier=urn:mrn|")["entry"]
    ]
    assert names == ["Alpha", "Mu", "Zeta"]
    names_desc = [
        e["resource"]["name"][0]["family"]
        for e in search("Patient?_sort=-family&identifier=urn:mrn|")["entry"]
    ]
    assert names_desc == ["Zeta", "Mu", "Alpha"]
    codes = [
        e["resource"]["code"]["coding"][0]["code"]
        for e in search("Observation?_sort=code")["entry"]
    ]
    assert codes == sorted(codes)
    # date prefix ap: within 10% of the distance from now
    assert len(_ids(search("Observation?date=ap2024-03-20"))) >= 2
    assert _ids(search("Observation?date=ap2000-01-01")) == set()
    # Prefer: handling=lenient drops unknown parameters (named in an outcome entry); strict refuses
    lenient = search("Patient?family=Zeta&nosuch=1", {**doc, "Prefer": "handling=lenient"})
    assert _ids(lenient) == {f"Patient/{zeta}"}
    (warning,) = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "nosuch" in warning["issue"][0]["diagnostics"]
    assert "nosuch" not in lenient["link"][0]["url"]
    strict = fx.client.get("/fhir/Patient?family=Zeta&nosuch=1", headers=doc)
    assert strict.status_code == 400 and "nosuch" in outcome_text(strict)


def test_patient_token_chains_and_revincludes_stay_in_compartment(
    fx: Node, data: dict[str, str]
) -> None:
    alpha = fx.login("alpha")
    # Alpha cannot learn about Zeta through a chain, _has or _revinclude
    r = fx.client.get("/fhir/Observation?subject:Patient.name=zeta", headers=alpha)
    assert r.status_code == 200 and r.json()["total"] == 0
    r = fx.client.get("/fhir/Patient?_has:Observation:subject:code=9279-1", headers=alpha)
    assert r.json()["total"] == 0
    r = fx.client.get("/fhir/Patient?_revinclude=Observation:subject", headers=alpha)
    assert _ids(r.json()) == {f"Patient/{data['Alpha']}"} and _ids(r.json(), "include") == set()


def test_patch(fx: Node, doc: dict[str, str]) -> None:
    created = fx.post(
        "/fhir/Patient",
        {"resourceType": "Patient", "name": [{"family": "Patchy"}], "gender": "male"},
        doc,
    ).json()
    url = f"/fhir/Patient/{created['id']}"

    def patch(body: Any, ctype: str, **headers: str) -> Any:
        return fx.client.patch(
            url, content=json.dumps(body), headers={**doc, "Content-Type": ctype, **headers}
        )

    ops = [
        {"op": "test", "path": "/gender", "value": "male"},
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/name/0/given", "value": ["Pat"]},
    ]
    r = patch(ops, "application/json-patch+json")
    assert r.status_code == 200 and r.json()["gender"] == "female"
    assert r.json()["meta"]["versionId"] == "2" and r.json()["name"][0]["given"] == ["Pat"]
    r = patch({"birthDate": "1970-01-01", "gender": None}, "application/merge-patch+json")
    assert (
        r.status_code == 200 and r.json()["birthDate"] == "1970-01-01" and "gender" not in r.json()
    )
    # bad input: 4xx, and the resource is unchanged (still version 3)
    for body, ctype, status in (
        ([{"op": "jump", "path": "/gender"}], "application/json-patch+json", 400),
        ([{"op": "remove", "path": "/nosuch"}], "application/json-patch+json", 400),
        (
            [{"op": "test", "path": "/birthDate", "value": "1999-01-01"}],
            "application/json-patch+json",
            422,
        ),
        ([{"op": "replace", "path": "/id", "value": "other"}], "application/json-patch+json", 400),
        ([{"op": "add", "path": "/gender", "value": "robot"}], "application/json-patch+json", 400),
        ({"resourceType": "Parameters", "parameter": []}, "application/fhir+json", 415),
        ({"gender": "male"}, "text/plain", 415),
        ([], "application/json-patch+json", 400),
    ):
        r = patch(body, ctype)
        assert r.status_code == status, (body, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    stale = patch({"gender": "male"}, "application/merge-patch+json", **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert fx.client.get(url, headers=doc).json()["meta"]["versionId"] == "3"


def test_conditional_update_and_delete(fx: Node, doc: dict[str, str]) -> None:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:cu", "value": "1"}],
        "name": [{"family": "Cond"}],
    }
    r = fx.put("/fhir/Patient?identifier=urn:cu|1", body, doc)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = fx.put("/fhir/Patient?identifier=urn:cu|1", {**body, "gender": "other"}, doc)
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    fx.post("/fhir/Patient", body, doc)  # a second match
    assert fx.put("/fhir/Patient?identifier=urn:cu|1", body, doc).status_code == 412
    assert fx.client.delete("/fhir/Patient?identifier=urn:cu|1", headers=doc).status_code == 412
    assert fx.client.delete("/fhir/Patient", headers=doc).status_code == 400
    r = fx.client.delete(f"/fhir/Patient?_id={pid}", headers=doc)
    assert r.status_code == 200 and "1 Patient deleted" in outcome_text(r)
    assert fx.client.get(f"/fhir/Patient/{pid}", headers=doc).status_code == 410
    none = fx.client.delete("/fhir/Patient?identifier=urn:cu|nobody", headers=doc)
    assert none.status_code == 200 and "nothing deleted" in outcome_text(none)


def test_everything_by_post_with_start_end(
    fx: Node, doc: dict[str, str], data: dict[str, str]
) -> None:
    zeta = data["Zeta"]
    url = f"/fhir/Patient/{zeta}/$everything"
    whole = fx.client.post(url, headers=doc)
    assert whole.status_code == 200 and f"Observation/{data['obs1']}" in _ids(whole.json())
    window = fx.client.post(
        url, data={"start": "2024-03-15", "end": "2024-03-22"}, headers=doc
    ).json()
    got = _ids(window)
    assert f"Observation/{data['obs20']}" in got and f"Patient/{zeta}" in got
    assert f"Observation/{data['obs1']}" not in got and f"Observation/{data['obs25']}" not in got
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "start", "valueDate": "2024-03-24"}],
    }
    r = fx.post(url, params, doc)
    assert f"Observation/{data['obs25']}" in _ids(
        r.json()
    ) and f"Observation/{data['obs1']}" not in _ids(r.json())
    bad = fx.client.get(f"{url}?start=2024-04-01&end=2024-03-01", headers=doc)
    assert bad.status_code == 400


def test_delete_of_referenced_resource_is_refused(fx: Node, doc: dict[str, str]) -> None:
    p = fx.post(
        "/fhir/Patient", {"resourceType": "Patient", "name": [{"family": "Ref"}]}, doc
    ).json()
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{p['id']}"},
    }
    o = fx.post("/fhir/Observation", obs, doc).json()
    r = fx.client.delete(f"/fhir/Patient/{p['id']}", headers=doc)
    assert r.status_code == 409 and f"Observation/{o['id']}" in outcome_text(r)
    assert fx.client.get(f"/fhir/Patient/{p['id']}", headers=doc).status_code == 200
    # a transaction deleting both succeeds
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
            {"request": {"method": "DELETE", "url": f"Observation/{o['id']}"}},
        ],
    }
    assert fx.post("/fhir", bundle, doc).status_code == 200
    assert fx.client.get(f"/fhir/Patient/{p['id']}", headers=doc).status_code == 410


def test_referential_integrity_can_be_turned_off(tmp_path: Path) -> None:
    for node in make_node(None, tmp_path / "n", api={"delete_referential_integrity": False}):  # type: ignore[arg-type]
        d = node.login("doctor1")
        p = node.post("/fhir/Patient", {"resourceType": "Patient"}, d).json()
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{p['id']}"},
        }
        assert node.post("/fhir/Observation", obs, d).status_code == 201
        assert node.client.delete(f"/fhir/Patient/{p['id']}", headers=d).status_code == 200


def test_validate_operation(fx: Node, doc: dict[str, str]) -> None:
    good = {"resourceType": "Patient", "gender": "female"}
    r = fx.post("/fhir/Patient/$validate", good, doc)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    bad = fx.post("/fhir/Patient/$validate", {"resourceType": "Patient", "gender": "robot"}, doc)
    assert bad.status_code == 200 and bad.json()["issue"][0]["severity"] == "error"
    assert "gender" in outcome_text(bad)
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": good}]}
    assert (
        fx.post("/fhir/Patient/$validate", wrapped, doc).json()["issue"][0]["severity"]
        == "information"
    )
    assert (
        fx.post("/fhir/Patient/$validate", {"resourceType": "Observation"}, doc).status_code == 400
    )
    before = fx.client.get("/fhir/Patient?_summary=count", headers=doc).json()["total"]
    assert fx.client.get("/fhir/Patient?_summary=count", headers=doc).json()["total"] == before


def test_lastn(fx: Node, doc: dict[str, str], data: dict[str, str]) -> None:
    zeta = data["Zeta"]
    r = fx.client.get(f"/fhir/Observation/$lastn?patient={zeta}", headers=doc)
    assert r.status_code == 200, r.text
    latest = {e["resource"]["id"] for e in r.json()["entry"]}
    assert latest == {data["obs20"], data["obs25"]}  # the newest heart rate, the one resp. rate
    two = fx.client.get(f"/fhir/Observation/$lastn?patient={zeta}&max=2&code=8867-4", headers=doc)
    assert [e["resource"]["id"] for e in two.json()["entry"]] == [data["obs20"], data["obs1"]]
    for query in ("", f"patient={zeta}&max=0", f"patient={zeta}&nosuch=1"):
        assert fx.client.get(f"/fhir/Observation/$lastn?{query}", headers=doc).status_code == 400
    alpha = fx.login("alpha")  # a patient token: only its own compartment
    other = fx.client.get(f"/fhir/Observation/$lastn?patient={zeta}", headers=alpha)
    assert other.status_code == 403
    own = fx.client.get(f"/fhir/Observation/$lastn?patient={data['Alpha']}", headers=alpha)
    assert own.status_code == 200 and own.json()["total"] == 0
