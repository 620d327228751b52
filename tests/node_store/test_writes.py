"""Create/read/update/delete, versions, conditional operations, transactions and batches."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import version_rows

from node.store import FhirStore
from servicekit.outcome import BadRequest, Gone, NotFound, PreconditionFailed, Unprocessable

ORG_SYS = "https://example.org/orgs"


def _patient(ident: str = "P1", family: str = "Doe") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": ident}],
        "name": [{"family": family}],
    }


def _org(ident: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "identifier": [{"system": ORG_SYS, "value": ident}]}


def test_create_read_update_history_delete(store: FhirStore) -> None:
    created = store.create(_patient())
    pid = created.resource["id"]
    assert created.status == 201
    assert created.location == f"Patient/{pid}/_history/1"
    assert created.resource["meta"]["versionId"] == "1"
    assert store.read("Patient", pid) == created.resource

    changed = {**created.resource, "name": [{"family": "Roe"}]}
    updated = store.update("Patient", pid, changed, if_match='W/"1"')
    assert updated.status == 200 and updated.resource["meta"]["versionId"] == "2"
    assert store.vread("Patient", pid, "1")["name"] == [{"family": "Doe"}]
    assert store.vread("Patient", pid, 2)["name"] == [{"family": "Roe"}]
    # searching sees the current version only
    assert store.search("Patient", [("family", "roe")]).total == 1
    assert store.search("Patient", [("family", "doe")]).total == 0

    with pytest.raises(PreconditionFailed, match='W/"1"'):
        store.update("Patient", pid, {**changed, "gender": "male"}, if_match='W/"1"')
    assert store.read("Patient", pid)["meta"]["versionId"] == "2"

    # an update with identical content is not a new version
    same = store.update("Patient", pid, changed)
    assert same.resource["meta"]["versionId"] == "2" and same.status == 200

    store.delete("Patient", pid)
    with pytest.raises(Gone):
        store.read("Patient", pid)
    assert store.search("Patient", [("family", "roe")]).total == 0
    history = store.history("Patient", pid)
    assert [h["meta"]["versionId"] for h in history] == ["3", "2", "1"]
    entries = store.history_entries("Patient", pid)
    assert [e.deleted for e in entries] == [True, False, False]
    assert "name" not in history[0]
    with pytest.raises(Gone):
        store.vread("Patient", pid, 3)
    with pytest.raises(NotFound):
        store.vread("Patient", pid, 9)
    with pytest.raises(NotFound):
        store.read("Patient", "nope")
    with pytest.raises(NotFound):
        store.delete("Patient", "nope")
    # re-create after delete (update on a deleted id)
    again = store.update("Patient", pid, _patient())
    assert again.status == 201 and again.resource["meta"]["versionId"] == "4"
    assert store.counts() == {"Patient": 1}


def test_create_on_update_and_id_rules(store: FhirStore) -> None:
    out = store.update("Patient", "client-1", _patient())
    assert out.status == 201 and out.resource["id"] == "client-1"
    with pytest.raises(BadRequest, match="does not match"):
        store.update("Patient", "client-1", {**_patient(), "id": "other"})
    with pytest.raises(BadRequest, match="invalid resource id"):
        store.update("Patient", "bad id!", _patient())
    with pytest.raises(PreconditionFailed):
        store.update("Patient", "client-2", _patient(), if_match='W/"1"')
    assert store.counts() == {"Patient": 1}


def test_conditional_create(store: FhirStore) -> None:
    first = store.create(_patient("X"), if_none_exist="identifier=urn:oid:1.2.3|X")
    assert first.status == 201
    again = store.create(_patient("X"), if_none_exist="identifier=urn:oid:1.2.3|X")
    assert again.status == 200 and again.resource["id"] == first.resource["id"]
    store.create(_patient("X"))  # unconditional: a second one with the same identifier
    with pytest.raises(PreconditionFailed, match="matched 2"):
        store.create(_patient("X"), if_none_exist="identifier=urn:oid:1.2.3|X")
    with pytest.raises(BadRequest, match="bogus"):
        store.create(_patient("Y"), if_none_exist="bogus=1")
    assert store.counts() == {"Patient": 2}


def _post(resource: dict[str, Any], if_none_exist: str | None = None) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"resource": resource, "request": request}


def test_a_bundles_if_none_exist_answers_match_one_search_each(store: FhirStore) -> None:
    """The ifNoneExist criteria of a Bundle's POSTs are looked up together; each answer is
    still what its own search would say: the live match (200 to it), nothing (201), a deleted
    resource is no match, two matches are a 412, a differently quoted spelling and criteria of
    another shape are answered too, and two entries naming one new identifier both create (the
    Bundle's own entries are not searched)."""
    kept = store.create(_patient("KEPT")).resource["id"]
    gone = store.create(_patient("GONE")).resource["id"]
    store.delete("Patient", gone)
    response = store.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                _post(_patient("KEPT"), "identifier=urn:oid:1.2.3|KEPT"),
                _post(_patient("GONE"), "identifier=urn:oid:1.2.3|GONE"),
                _post(_patient("NEW"), "identifier=urn:oid:1.2.3|NEW"),
                _post(_patient("NEW"), "identifier=urn:oid:1.2.3|NEW"),
                _post(_patient("KEPT"), "identifier=urn%3Aoid%3A1.2.3%7CKEPT"),
                _post(_patient("OTHER", family="Kept"), "family=Doe&identifier=urn:oid:1.2.3|KEPT"),
                _post(_org("O1"), f"identifier={ORG_SYS}|O1"),
            ],
        }
    )
    statuses = [e["response"]["status"][:3] for e in response["entry"]]
    locations = [e["response"]["location"].split("/")[1] for e in response["entry"]]
    assert statuses == ["200", "201", "201", "201", "200", "200", "201"]
    assert locations[0] == locations[4] == locations[5] == kept
    assert locations[1] != gone and locations[2] != locations[3]
    store.create(_patient("KEPT"))  # a second live KEPT: the criterion now matches two
    with pytest.raises(PreconditionFailed, match="matched 2"):
        store.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    _post(_patient("FINE"), "identifier=urn:oid:1.2.3|FINE"),
                    _post(_patient("KEPT"), "identifier=urn:oid:1.2.3|KEPT"),
                ],
            }
        )
    assert store.counts() == {"Patient": 5, "Organization": 1}


INVALID = [
    ({"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status"),
    ({"resourceType": "Patient", "birthDate": "2020-13-45"}, "Patient.birthDate"),
    ({"resourceType": "Patient", "foo": 1}, "Patient.foo"),
    ({"resourceType": "Patient", "name": [{"given": "Ann"}]}, "Patient.name[0].given"),
    ({"resourceType": "Spaceship"}, "Spaceship"),
    ({"name": "x"}, "resourceType"),
]


def test_invalid_resource_is_refused_and_nothing_stored(store: FhirStore) -> None:
    for resource, named in INVALID:
        with pytest.raises(BadRequest) as err:
            store.create(resource)
        assert named in err.value.diagnostics
        assert store.counts() == {} and version_rows(store) == 0


def test_missing_reference_is_refused(store: FhirStore) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/ghost"},
    }
    with pytest.raises(Unprocessable, match="Patient/ghost"):
        store.create(obs)
    pid = store.create(_patient()).resource["id"]
    store.delete("Patient", pid)
    with pytest.raises(Unprocessable, match=f"Patient/{pid}"):
        store.create({**obs, "subject": {"reference": f"Patient/{pid}"}})
    # contained, absolute and urn references are not local references
    ok = store.create(
        {
            **obs,
            "subject": {"reference": "https://elsewhere.example/fhir/Patient/1"},
            "performer": [{"reference": "#p1"}],
            "contained": [{"resourceType": "Practitioner", "id": "p1"}],
        }
    )
    assert ok.status == 201
    assert store.counts() == {"Observation": 1}


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_rewrites_urn_and_resolves_conditional_references(store: FhirStore) -> None:
    org = store.create(_org("H1")).resource["id"]
    bundle = _tx(
        {
            "fullUrl": "urn:uuid:obs-1",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "urn:uuid:pat-1"},
                "performer": [{"reference": f"Organization?identifier={ORG_SYS}|H1"}],
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": "urn:uuid:pat-1",
            "resource": {
                **_patient("T1"),
                "managingOrganization": {"reference": f"Organization/{org}"},
            },
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:oid:1.2.3|T1",
            },
        },
        {
            "resource": {**_org("H2"), "name": "Clinic"},
            "request": {"method": "PUT", "url": f"Organization?identifier={ORG_SYS}|H2"},
        },
    )
    response = store.transaction(bundle)
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    pid = response["entry"][1]["response"]["location"].split("/")[1]
    oid = response["entry"][0]["response"]["location"].split("/")[1]
    obs = store.read("Observation", oid)
    assert obs["subject"] == {"reference": f"Patient/{pid}"}
    assert obs["performer"] == [{"reference": f"Organization/{org}"}]
    # again: the patient matches ifNoneExist, the conditional PUT updates the same Organization
    bundle["entry"][2]["resource"]["name"] = "Clinic 2"
    response = store.transaction(bundle)
    assert response["entry"][1]["response"]["status"] == "200 OK"
    assert response["entry"][1]["response"]["location"] == f"Patient/{pid}"
    assert response["entry"][2]["response"]["status"] == "200 OK"
    assert store.counts() == {"Observation": 2, "Organization": 2, "Patient": 1}
    obs2 = response["entry"][0]["response"]["location"].split("/")[1]
    assert store.read("Observation", obs2)["subject"] == {"reference": f"Patient/{pid}"}


def _count_everything(store: FhirStore) -> tuple[dict[str, int], int]:
    return store.counts(), version_rows(store)


BAD_ENTRIES: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {
            "resource": {"resourceType": "Observation", "code": {"text": "x"}},
            "request": {"method": "POST", "url": "Observation"},
        },
        BadRequest,
        "Bundle.entry[1]",
    ),
    (
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/ghost"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        Unprocessable,
        "Patient/ghost",
    ),
    (
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "performer": [{"reference": f"Organization?identifier={ORG_SYS}|none"}],
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        Unprocessable,
        "matched no resource",
    ),
    (
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "performer": [{"reference": f"Organization?identifier={ORG_SYS}|dup"}],
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        PreconditionFailed,
        "several",
    ),
    (
        {"resource": _patient(), "request": {"method": "PATCH", "url": "Patient/1"}},
        BadRequest,
        "PATCH",
    ),
    (
        {"resource": _patient(), "request": {"method": "PUT", "url": "Patient/x"}, "fullUrl": "x"},
        BadRequest,
        "",
    ),
]


def test_transaction_with_one_bad_entry_stores_nothing(store: FhirStore) -> None:
    store.create(_org("dup"))
    store.create(_org("dup"))
    before = _count_everything(store)
    good = {
        "fullUrl": "urn:uuid:p",
        "resource": _patient("G"),
        "request": {"method": "POST", "url": "Patient"},
    }
    for bad_entry, error, named in BAD_ENTRIES:
        if bad_entry["request"]["url"] == "Patient/x":  # the same resource twice in one Bundle
            bundle = _tx(good, bad_entry, {**bad_entry, "fullUrl": "y"})
            named = "appears twice"
        else:
            bundle = _tx(good, bad_entry)
        with pytest.raises(error) as err:
            store.transaction(bundle)
        assert named in str(err.value)
        assert _count_everything(store) == before


def test_transaction_delete_and_get(store: FhirStore) -> None:
    pid = store.create(_patient()).resource["id"]
    response = store.transaction(
        _tx(
            {"request": {"method": "GET", "url": f"Patient?_id={pid}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": "Patient?family=doe"}},
        )
    )
    get1, delete, get2 = response["entry"]
    assert delete["response"]["status"] == "204 No Content"
    # GETs run after the writes (FHIR transaction order)
    assert get2["resource"]["total"] == 0
    assert get1["resource"]["total"] == 0
    assert store.counts() == {}


def test_transaction_get_of_deleted_fails_whole_transaction(store: FhirStore) -> None:
    pid = store.create(_patient()).resource["id"]
    store.delete("Patient", pid)
    with pytest.raises(Gone, match=r"Bundle.entry\[0\]"):
        store.transaction(_tx({"request": {"method": "GET", "url": f"Patient/{pid}"}}))


def test_batch_entries_are_independent(store: FhirStore) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _patient("B1"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "gender": "nope-not-a-code", "foo": 1},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient/ghost"}},
            {"resource": _patient("B2"), "request": {"method": "PUT", "url": "Patient/b2"}},
        ],
    }
    response = store.batch(bundle)
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "400", "404", "201 Created"]
    outcome = response["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Patient.foo" in outcome["issue"][0]["diagnostics"]
    assert store.counts() == {"Patient": 2}


def test_malformed_bundles(store: FhirStore) -> None:
    with pytest.raises(BadRequest, match="Bundle.type"):
        store.transaction({"resourceType": "Bundle", "type": "batch", "entry": []})
    with pytest.raises(BadRequest, match="missing request"):
        store.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": _patient()}]}
        )
    with pytest.raises(BadRequest, match="expected a Bundle"):
        store.transaction({"resourceType": "Patient"})


def test_concurrent_updates_lose_no_versions(store: FhirStore) -> None:
    pid = store.create(_patient()).resource["id"]
    writers, per_writer = 4, 5
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_writer):
                store.update("Patient", pid, {**_patient(), "name": [{"family": f"W{n}-{i}"}]})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = store.history("Patient", pid)
    versions = [int(h["meta"]["versionId"]) for h in history]
    assert versions == list(range(1 + writers * per_writer, 0, -1))
    families = {h["name"][0]["family"] for h in history}
    assert len(families) == 1 + writers * per_writer  # every write kept as its own version


def test_conditional_reference_to_an_entry_of_the_same_bundle(store: FhirStore) -> None:
    response = store.transaction(
        _tx(
            {
                "fullUrl": "urn:uuid:new-org",
                "resource": _org("NEW"),
                "request": {"method": "POST", "url": "Organization"},
            },
            {
                "resource": {
                    "resourceType": "Patient",
                    "managingOrganization": {"reference": f"Organization?identifier={ORG_SYS}|NEW"},
                },
                "request": {"method": "POST", "url": "Patient"},
            },
        )
    )
    org = response["entry"][0]["response"]["location"].split("/")[1]
    pid = response["entry"][1]["response"]["location"].split("/")[1]
    assert store.read("Patient", pid)["managingOrganization"] == {
        "reference": f"Organization/{org}"
    }


def test_concurrent_conditional_creates_create_one(store: FhirStore) -> None:
    barrier = threading.Barrier(4)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            out = store.create(_patient("RACE"), if_none_exist="identifier=urn:oid:1.2.3|RACE")
            statuses.append(out.status)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(statuses) == [200, 200, 200, 201]
    assert store.counts() == {"Patient": 1}
