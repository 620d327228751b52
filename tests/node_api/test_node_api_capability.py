"""/fhir/metadata: a valid R4 CapabilityStatement listing exactly what the store supports."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from node_api.node_harness import Node


@pytest.fixture
def statement(node: Node) -> dict:
    r = node.client.get("/fhir/metadata")  # public: no token needed
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    return r.json()


def test_capability_statement_is_valid_r4(statement: dict) -> None:
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}


def test_lists_exactly_the_supported_types_and_params(statement: dict) -> None:
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == set(SUPPORTED_SEARCH_PARAMS)
    for rtype, params in SUPPORTED_SEARCH_PARAMS.items():
        listed = {p["name"] for p in resources[rtype]["searchParam"]}
        assert listed == set(params), rtype
    obs = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert obs["code"] == "token" and obs["date"] == "date" and obs["patient"] == "reference"
    assert obs["_lastUpdated"] == "date" and obs["_id"] == "token"
    assert "Observation:patient" in resources["Observation"]["searchInclude"]
    assert resources["Patient"]["operation"][0]["name"] == "everything"
    codes = {i["code"] for i in resources["Patient"]["interaction"]}
    assert codes == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "create",
        "search-type",
    }


def test_every_listed_param_is_accepted_and_unlisted_refused(node: Node, statement: dict) -> None:
    doc = node.login("doctor1")
    sample = {
        "token": "http://loinc.org|1234-5",
        "string": "abc",
        "date": "ge2020-01-01",
        "reference": "p1",
        "quantity": "gt5",
        "composite": "http://loinc.org|1234-5$gt5",
    }
    for resource in statement["rest"][0]["resource"]:
        if resource["type"] not in ("Observation", "Patient", "Encounter", "Condition"):
            continue
        for param in resource["searchParam"]:
            value = sample.get(param["type"], "x")
            r = node.client.get(
                f"/fhir/{resource['type']}", params={param["name"]: value}, headers=doc
            )
            assert r.status_code == 200, (resource["type"], param["name"], r.text)
        r = node.client.get(f"/fhir/{resource['type']}", params={"not-a-param": "1"}, headers=doc)
        assert r.status_code == 400
