"""Walk the CapabilityStatement (issue 17, must-show 2): every declared interaction, search
parameter, include, revinclude, operation, format and patch format is exercised and works; what
is not declared — other interactions, operations, types, parameters, modifiers, formats — is
refused with a 4xx, never answered as if it had worked. One node (SQLite) for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from node_api.node_harness import FHIR, Node, make_node

SAMPLE = {
    "token": "http://loinc.org|1234-5",
    "string": "abc",
    "date": "ge2020-01-01",
    "reference": "p1",
    "quantity": "gt5",
    "number": "5",
    "uri": "http://example.org",
    "composite": "http://loinc.org|1234-5$gt5",
}
# Modifiers the CapabilityStatement's documentation declares, per parameter type; every other
# modifier is refused (400) on every parameter.
DECLARED_MODIFIERS = {
    "string": ("exact", "contains", "missing"),
    "token": ("not", "text", "in", "not-in", "missing"),
    "date": ("missing",),
    "reference": ("missing",),
    "quantity": ("missing",),
    "composite": (),
}
REFUSED_MODIFIERS = ("below", "above", "identifier", "of-type", "iterate")
# :in / :not-in name a ValueSet the node holds (the walk stores one); on non-tokens they are refused
WALK_VALUE_SET = "http://example.org/fhir/ValueSet/walk"


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict[str, str], dict]]:
    for node in make_node(None, tmp_path_factory.mktemp("walk") / "node"):  # type: ignore[arg-type]
        doc = node.login("doctor1")
        value_set = {
            "resourceType": "ValueSet",
            "url": WALK_VALUE_SET,
            "status": "active",
            "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": "1"}]}]},
        }
        assert node.client.post("/fhir/ValueSet", json=value_set, headers=doc).status_code == 201
        statement = node.client.get("/fhir/metadata").json()
        yield node, doc, statement


def _resources(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in statement["rest"][0]["resource"]}


def test_every_declared_search_parameter_include_and_revinclude_works(walk: Any) -> None:
    node, doc, statement = walk
    refused_kinds: set[str] = set()
    documented = statement["rest"][0]["documentation"]
    for modifier in {m for ms in DECLARED_MODIFIERS.values() for m in ms}:
        assert f":{modifier}" in documented.split("Not supported")[0], modifier
    for rtype, declared in _resources(statement).items():
        # all of a type's declared parameters at once (AND): a refused one would be a 400
        # naming it; likewise every declared _include and _revinclude in one request each
        params = [(p["name"], SAMPLE.get(p["type"], "x")) for p in declared["searchParam"]]
        r = node.client.get(f"/fhir/{rtype}", params=params, headers=doc)
        assert r.status_code == 200, (rtype, r.text)
        for key, field in (("_include", "searchInclude"), ("_revinclude", "searchRevInclude")):
            values = [(key, v) for v in declared.get(field, [])]
            for start in range(0, len(values), 60):  # the edge allows 64 parameters a request
                r = node.client.get(
                    f"/fhir/{rtype}", params=values[start : start + 60], headers=doc
                )
                assert r.status_code == 200, (rtype, key, r.text)
        # undeclared parameter and modifiers: refused
        for key in ("not-a-param", "_id:text", "_id:in", "_id:below"):
            r = node.client.get(f"/fhir/{rtype}", params={key: "1"}, headers=doc)
            assert r.status_code == 400, (rtype, key)
        # every declared modifier of every parameter at once (AND); each undeclared one alone,
        # once per parameter type (the rule is per type)
        modified, refused = [], []
        for p in declared["searchParam"]:
            kind = p["type"]
            if p["name"] in ("_id", "_lastUpdated"):
                continue  # documented: no modifiers (refused above)
            for modifier in DECLARED_MODIFIERS.get(kind, ()):
                value = "true" if modifier == "missing" else SAMPLE.get(kind, "x")
                value = WALK_VALUE_SET if modifier in ("in", "not-in") else value
                modified.append((f"{p['name']}:{modifier}", value))
            if kind not in refused_kinds:
                refused_kinds.add(kind)
                other = {"string": "text", "token": "contains", "composite": "missing"}.get(kind)
                value_set = () if kind == "token" else ("in", "not-in")
                refused += [
                    f"{p['name']}:{m}" for m in (*REFUSED_MODIFIERS, *value_set, other) if m
                ]
        for start in range(0, len(modified), 60):  # the edge allows 64 parameters a request
            r = node.client.get(f"/fhir/{rtype}", params=modified[start : start + 60], headers=doc)
            assert r.status_code == 200, (rtype, r.text)
        for key in refused:
            r = node.client.get(f"/fhir/{rtype}", params={key: "1"}, headers=doc)
            assert r.status_code == 400 and key in r.text, (rtype, key, r.text)


def test_every_declared_result_parameter_works(walk: Any) -> None:
    node, doc, statement = walk
    values = {
        "_count": "5",
        "_offset": "0",
        "_sort": "-_lastUpdated",
        "_include": "*",
        "_revinclude": "Observation:subject",
        "_total": "accurate",
        "_summary": "count",
        "_elements": "name",
        "_format": "json",
        "_pretty": "true",
    }
    for param in statement["rest"][0]["searchParam"]:
        name = param["name"]
        if name == "_has":
            r = node.client.get("/fhir/Patient?_has:Observation:subject:code=1234-5", headers=doc)
        else:
            r = node.client.get("/fhir/Patient", params={name: values[name]}, headers=doc)
        assert r.status_code == 200, (name, r.text)
    for fmt in statement["format"]:
        assert (
            node.client.get("/fhir/Patient", params={"_format": fmt}, headers=doc).status_code
            == 200
        )
    for undeclared in ("xml", "application/fhir+xml", "turtle", "text/html"):
        r = node.client.get("/fhir/Patient", params={"_format": undeclared}, headers=doc)
        assert r.status_code == 406, undeclared


def _lifecycle(node: Node, doc: dict[str, str], rtype: str, interactions: set[str]) -> None:
    """Each declared interaction on one resource of ``rtype`` (a minimal valid one)."""
    assert "create" in interactions
    r = node.post(f"/fhir/{rtype}", {"resourceType": rtype}, doc)
    assert r.status_code == 201, (rtype, r.text)
    rid = r.json()["id"]
    if "read" in interactions:
        assert node.client.get(f"/fhir/{rtype}/{rid}", headers=doc).status_code == 200
    if "update" in interactions:
        r = node.put(
            f"/fhir/{rtype}/{rid}",
            {"resourceType": rtype, "id": rid, "meta": {"tag": [{"code": "walked"}]}},
            doc,
        )
        assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2", (rtype, r.text)
    if "patch" in interactions:
        for fmt, body in (
            ("application/json-patch+json", [{"op": "add", "path": "/language", "value": "en"}]),
            ("application/merge-patch+json", {"language": "de"}),
        ):
            r = node.client.patch(
                f"/fhir/{rtype}/{rid}",
                content=json.dumps(body),
                headers={**doc, "Content-Type": fmt},
            )
            assert r.status_code == 200, (rtype, fmt, r.text)
    if "vread" in interactions:
        assert node.client.get(f"/fhir/{rtype}/{rid}/_history/1", headers=doc).status_code == 200
    if "history-instance" in interactions:
        history = node.client.get(f"/fhir/{rtype}/{rid}/_history", headers=doc).json()
        assert history["total"] == 4, rtype
    if "search-type" in interactions:
        found = node.client.get(f"/fhir/{rtype}?_id={rid}", headers=doc).json()
        assert found["total"] == 1
    if "delete" in interactions:
        assert node.client.delete(f"/fhir/{rtype}/{rid}", headers=doc).status_code == 200
        assert node.client.get(f"/fhir/{rtype}/{rid}", headers=doc).status_code == 410


def test_every_declared_interaction_works_and_undeclared_are_refused(walk: Any) -> None:
    node, doc, statement = walk
    walked = 0
    for rtype, declared in _resources(statement).items():
        interactions = {i["code"] for i in declared["interaction"]}
        probe = node.post(f"/fhir/{rtype}/$validate", {"resourceType": rtype}, doc).json()
        if probe["issue"][0]["severity"] == "information":  # a bare resource of this type is valid
            _lifecycle(node, doc, rtype, interactions)
            walked += 1
        else:  # the routes exist and answer: bad input is a 400 naming what is missing
            r = node.post(f"/fhir/{rtype}", {"resourceType": rtype}, doc)
            assert r.status_code == 400, (rtype, r.text)
            assert node.client.get(f"/fhir/{rtype}/nope", headers=doc).status_code == 404
        # undeclared interactions: history-type and -system, search-system, unknown operations
        assert node.client.get(f"/fhir/{rtype}/_history", headers=doc).status_code in (400, 404)
        assert node.client.post(f"/fhir/{rtype}/$expunge", headers=doc).status_code in (
            400,
            404,
            405,
        )
        assert declared["conditionalRead"] == "not-supported"
    assert walked >= 9
    assert node.client.get("/fhir/_history", headers=doc).status_code == 404
    assert node.client.get("/fhir", headers=doc).status_code == 405  # no search-system
    assert node.client.get("/fhir/Spaceship", headers=doc).status_code in (400, 404)
    system = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert system == {"transaction", "batch"}
    for kind in sorted(system):
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [
                {
                    "request": {"method": "POST", "url": "Patient"},
                    "resource": {"resourceType": "Patient"},
                }
            ],
        }
        r = node.post("/fhir", bundle, doc)
        assert r.status_code == 200 and r.json()["type"] == f"{kind}-response"
    history_bundle = {"resourceType": "Bundle", "type": "history", "entry": []}
    assert node.post("/fhir", history_bundle, doc).status_code == 400


def test_conditional_interactions_as_declared(walk: Any) -> None:
    node, doc, statement = walk
    patient = _resources(statement)["Patient"]
    assert patient["conditionalCreate"] and patient["conditionalUpdate"]
    assert patient["conditionalDelete"] == "single"
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:walk", "value": "1"}]}
    first = node.post("/fhir/Patient", body, doc, extra={"If-None-Exist": "identifier=urn:walk|1"})
    again = node.post("/fhir/Patient", body, doc, extra={"If-None-Exist": "identifier=urn:walk|1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert node.put("/fhir/Patient?identifier=urn:walk|1", body, doc).status_code == 200
    assert node.client.delete("/fhir/Patient?identifier=urn:walk|1", headers=doc).status_code == 200


def test_every_declared_operation_works_and_patch_formats(walk: Any) -> None:
    node, doc, statement = walk
    pid = node.post("/fhir/Patient", {"resourceType": "Patient"}, doc).json()["id"]
    for rtype, declared in _resources(statement).items():
        for op in declared.get("operation", []):
            name = op["name"]
            if name == "everything":
                assert (
                    node.client.get(f"/fhir/Patient/{pid}/$everything", headers=doc).status_code
                    == 200
                )
                assert (
                    node.client.post(f"/fhir/Patient/{pid}/$everything", headers=doc).status_code
                    == 200
                )
            elif name == "validate":
                r = node.post(f"/fhir/{rtype}/$validate", {"resourceType": rtype}, doc)
                assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome"
            elif name == "export":
                path = f"/fhir/{rtype}/$export"
                if rtype == "Group":  # instance level: a Group of the patient above
                    group = {
                        "resourceType": "Group",
                        "type": "person",
                        "actual": True,
                        "member": [{"entity": {"reference": f"Patient/{pid}"}}],
                    }
                    gid = node.post("/fhir/Group", group, doc).json()["id"]
                    path = f"/fhir/Group/{gid}/$export"
                r = node.client.get(path, headers={**doc, "Prefer": "respond-async"})
                assert r.status_code == 202 and r.headers["Content-Location"]
            elif name == "lastn":
                r = node.client.get(f"/fhir/{rtype}/$lastn?patient={pid}", headers=doc)
                assert r.status_code == 200
            else:
                raise AssertionError(f"declared operation {name} has no check")
    for op in statement["rest"][0]["operation"]:
        assert op["name"] == "export"
        r = node.client.get("/fhir/$export", headers={**doc, "Prefer": "respond-async"})
        assert r.status_code == 202
    assert statement["patchFormat"] == [
        "application/json-patch+json",
        "application/merge-patch+json",
    ]
    r = node.client.patch(
        f"/fhir/Patient/{pid}", content="gender=male", headers={**doc, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    fhirpath_patch = {"resourceType": "Parameters", "parameter": []}
    r = node.client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(fhirpath_patch),
        headers={**doc, "Content-Type": FHIR},
    )
    assert r.status_code == 415


def test_declared_security_endpoints_answer(walk: Any) -> None:
    node, _doc, statement = walk
    security = statement["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    path = lambda url: url.split("://", 1)[1].split("/", 1)[1]  # noqa: E731
    assert node.client.get("/" + path(uris["authorize"])).status_code == 400  # no request: a page
    r = node.client.post("/" + path(uris["token"]), data={"grant_type": "nope"})
    assert r.json()["error"] == "unsupported_grant_type"
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_in_over_http_is_an_outcome_naming_the_parameter(walk: Any) -> None:
    node, doc, _ = walk
    r = node.client.get("/fhir/Observation", params={"code:in": WALK_VALUE_SET}, headers=doc)
    assert r.status_code == 200 and r.json()["resourceType"] == "Bundle", r.text
    r = node.client.get("/fhir/Observation", params={"code:in": "http://nope"}, headers=doc)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", r.text
    assert "code:in=http://nope: no ValueSet with this url" in r.text
