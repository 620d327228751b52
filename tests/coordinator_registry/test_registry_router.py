"""The model registry's HTTP API (coordinator/model_registry/router.py) on SQLite and PostgreSQL:
who may publish (the authority) and who may read (member organisations), the publish → list →
fetch round trip with the card through the real registry client, and bad uploads refused with a
4xx OperationOutcome that names the problem, with nothing stored."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import numpy as np
import pytest
from registry_app import BASE, Registry

from coordinator.model_registry import card_rules
from federated.model_card import build_card, encode_weights
from federated.registry_client import RegistryClient, RegistryError
from federated.run_plan import RunPlan
from federated.server_loop import NodeRecord, RunResult
from protos import model_card

pytestmark = pytest.mark.usefixtures("registry")


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "linear.weight": rng.normal(size=(1, 26)).astype(np.float32),
        "linear.bias": np.array([-1.25], dtype=np.float32),
    }


def _card() -> dict[str, Any]:
    """A card exactly as the authority's ServerApp builds it (federated.model_card)."""
    plan = RunPlan(rounds=3, epsilon=3.0, run_label="run-test")
    metrics = {"auroc": 0.71, "auprc": 0.3, "brier": 0.12, "accuracy": 0.8}
    nodes = {
        i: NodeRecord(org, i, [1, 2, 3], cohort, test, 2.97, 8e-5, 1.1, 0.5, metrics)
        for i, (org, cohort, test) in enumerate(
            [("org-tertiary", 3310, 1100), ("org-clinic", 390, 130)], start=1
        )
    }
    result = RunResult(plan, _arrays(), nodes=nodes, final_metrics=metrics)
    return build_card(result, run_id="42")


def _upload(**changes: Any) -> dict[str, Any]:
    return {"card": _card(), "weights": encode_weights(_arrays()), "published": True, **changes}


def _outcome(r: Any, status: int, *fragments: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    text = " ".join(i.get("diagnostics", "") for i in body["issue"])
    for fragment in fragments:
        assert fragment in text, text


def _client(reg: Registry, org: str) -> RegistryClient:
    client = RegistryClient(BASE, reg.pki.creds[org])
    client.http.close()
    client.http = reg.client  # the real client's requests, served by the app in-process
    return client


# ---- round trip -------------------------------------------------------------------------


def test_publish_list_fetch_round_trip_with_card(registry: Registry) -> None:
    card, arrays = _card(), _arrays()
    model_id = _client(registry, "org-authority").publish(card, arrays)
    assert model_id.startswith("m-") and registry.stored() == 1

    for org in ("org-tertiary", "org-clinic", "org-authority"):
        node = _client(registry, org)
        listed = node.list("readmission-30d")
        assert [m["id"] for m in listed] == [model_id]
        assert listed[0]["participants"] == ["org-clinic", "org-tertiary"]
        assert listed[0]["created_by"] == "org-authority"
        assert listed[0]["evaluation"] == card["evaluation"]
        got = node.card(model_id)
        assert got["id"] == got["model_id"] == model_id and got["published"] is True
        for key in ("task", "feature_spec", "rounds", "strategy", "privacy", "participants"):
            assert got[key] == card[key], key
        assert [p["cohort_size_rounded"] for p in got["participants"]] == [390, 3310]
        assert {p["epsilon"] for p in got["participants"]} == {2.97}
        weights = node.weights(model_id)
        assert set(weights) == set(arrays)
        for name, a in arrays.items():
            np.testing.assert_array_equal(weights[name], a)
    assert registry.get("org-clinic", "/models", task="other-task").json() == {"models": []}


def test_unpublished_models_are_the_authoritys_until_published(registry: Registry) -> None:
    authority = _client(registry, "org-authority")
    model_id = authority.publish(_card(), _arrays(), publish=False)
    node = _client(registry, "org-tertiary")
    assert node.list() == []
    for path in (f"/models/{model_id}", f"/models/{model_id}/weights"):
        _outcome(registry.get("org-tertiary", path), 404, model_id)
    assert authority.card(model_id)["published"] is False
    assert [m["id"] for m in authority.list()] == [model_id]

    r = registry.post("org-authority", f"/models/{model_id}/publish", {"published": True})
    assert r.status_code == 200 and r.json() == {"id": model_id, "published": True}
    assert [m["id"] for m in node.list()] == [model_id]
    assert node.card(model_id)["published"] is True

    r = registry.post("org-authority", f"/models/{model_id}/publish", {"published": False})
    assert r.status_code == 200
    assert node.list() == []


# ---- who may do what ---------------------------------------------------------------------


@pytest.mark.parametrize("org", ["org-tertiary", "org-clinic"])
def test_only_the_authority_stores_and_publishes(registry: Registry, org: str) -> None:
    _outcome(registry.post(org, "/models", _upload()), 403, "not the regional authority")
    model_id = _client(registry, "org-authority").publish(_card(), _arrays(), publish=False)
    r = registry.post(org, f"/models/{model_id}/publish", {"published": True})
    _outcome(r, 403, "not the regional authority")
    assert registry.stored() == 1
    assert _client(registry, "org-authority").card(model_id)["published"] is False
    with pytest.raises(RegistryError, match="403"):
        _client(registry, org).publish(_card(), _arrays())


ROUTES = [
    ("POST", "/models"),
    ("GET", "/models"),
    ("GET", "/models/{id}"),
    ("GET", "/models/{id}/weights"),
    ("POST", "/models/{id}/publish"),
]


def _call(reg: Registry, method: str, path: str, headers: dict[str, str]) -> Any:
    body = _upload() if path == "/models" else {"published": True}
    if method == "GET":
        return reg.client.get(path, headers=headers)
    return reg.client.post(path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_every_route_needs_a_member_organisation(
    registry: Registry, method: str, route: str
) -> None:
    model_id = _client(registry, "org-authority").publish(_card(), _arrays())
    path = route.replace("{id}", model_id)
    pki = registry.pki

    _outcome(_call(registry, method, path, {}), 401, "organisation assertion is required")
    foreign = registry.headers(pki.foreign, path)  # right org id, another CA
    _outcome(_call(registry, method, path, foreign), 401, "assertion refused")
    other_audience = registry.headers("org-authority", "/status")
    _outcome(_call(registry, method, path, other_audience), 401, "assertion refused")
    for org in ("org-unregistered", "org-revoked"):
        _outcome(
            _call(registry, method, path, registry.headers(org, path)),
            403,
            f"{org} is not a registered organisation",
        )
    once = registry.headers("org-authority", path)
    assert _call(registry, method, path, once).status_code in (200, 201)
    _outcome(_call(registry, method, path, once), 401, "assertion refused")  # replayed jti
    # only the authority's single successful POST /models added a row
    assert registry.stored() == (2 if (method, route) == ("POST", "/models") else 1)


# ---- bad input ---------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    body = _upload()
    del body["card"][key]
    return body


def _card_with(**fields: Any) -> dict[str, Any]:
    body = _upload()
    body["card"].update(fields)
    return body


def _participant_with(**fields: Any) -> dict[str, Any]:
    body = _upload()
    body["card"]["participants"][0].update(fields)
    return body


def _participant_without(key: str) -> dict[str, Any]:
    body = _upload()
    del body["card"]["participants"][0][key]
    return body


def _weight_with(**fields: Any) -> dict[str, Any]:
    body = _upload()
    body["weights"]["linear.weight"].update(fields)
    return body


_ZERO_26 = base64.b64encode(bytes(4 * 26)).decode()
BAD_UPLOADS = {
    "card missing task": (_without("task"), "lacks 'task'"),
    "card missing feature_spec": (_without("feature_spec"), "lacks 'feature_spec'"),
    "card missing rounds": (_without("rounds"), "lacks 'rounds'"),
    "card missing strategy": (_without("strategy"), "lacks 'strategy'"),
    "card missing participants": (_without("participants"), "lacks 'participants'"),
    "card missing evaluation": (_without("evaluation"), "lacks 'evaluation'"),
    "unknown task": (_card_with(task="mortality-1y"), "'mortality-1y' is not a known task"),
    "spec of another task": (_card_with(feature_spec="csv"), "not a feature spec of"),
    "rounds not positive": (_card_with(rounds=0), "card.rounds"),
    "participants not a list": (_card_with(participants="org-tertiary"), "non-empty list"),
    "no participants": (_card_with(participants=[]), "non-empty list"),
    "participant without org": (_participant_without("org"), "lacks 'org'"),
    "participant without delta": (_participant_without("delta"), "lacks 'delta'"),
    "unrounded cohort": (_participant_with(cohort_size_rounded=137), "rounded to 10"),
    "cohort as text": (_participant_with(cohort_size_rounded="140"), "rounded to 10"),
    "negative epsilon": (_participant_with(epsilon=-1), "epsilon must be a non-negative"),
    "evaluation not numbers": (_card_with(evaluation={"auroc": "good"}), "card.evaluation"),
    "card not an object": ({**_upload(), "card": ["task"]}, "card must be an object"),
    "no weights": ({"card": _card()}, "card and weights are required"),
    "empty weights": (_upload(weights={}), "non-empty object"),
    "weights not an object": (_upload(weights=[1, 2]), "non-empty object"),
    "array without data": (
        {**_upload(), "weights": {"w": {"dtype": "float32", "shape": [1]}}},
        "needs dtype, shape and data",
    ),  # fmt: skip
    "float64 array": (_weight_with(dtype="float64"), "dtype must be 'float32'"),
    "negative shape": (_weight_with(shape=[1, -26]), "non-negative integers"),
    "data not base64": (_weight_with(data="not base64!"), "not valid base64"),
    "data does not fit shape": (_weight_with(shape=[2, 26], data=_ZERO_26), "do not fit shape"),
    "too many values": (
        _weight_with(shape=[model_card.MAX_PARAMETERS + 1]),
        f"at most {model_card.MAX_PARAMETERS}",
    ),
    "published not a flag": (_upload(published="yes"), "published must be true or false"),
    "body is a list": ([_upload()], "body must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_nothing_stored(registry: Registry, case: str) -> None:
    body, fragment = BAD_UPLOADS[case]
    _outcome(registry.post("org-authority", "/models", copy.deepcopy(body)), 400, fragment)
    assert registry.stored() == 0
    assert registry.get("org-authority", "/models").json() == {"models": []}


def test_body_that_is_not_json_is_refused(registry: Registry) -> None:
    headers = {**registry.headers("org-authority", "/models"), "content-type": "application/json"}
    r = registry.client.post("/models", content=b'{"card": {', headers=headers)
    _outcome(r, 400, "body is not JSON")
    assert registry.stored() == 0


def test_oversize_model_is_refused_before_it_is_stored(registry: Registry) -> None:
    body = _upload()
    body["weights"]["padding"] = {"dtype": "float32", "shape": [], "data": ""}
    blob = json.dumps(body).encode()
    filler = b" " * (card_rules.MAX_MODEL_BYTES + 1 - len(blob))  # whitespace: still valid JSON
    headers = {**registry.headers("org-authority", "/models"), "content-type": "application/json"}
    r = registry.client.post("/models", content=blob[:-1] + filler + blob[-1:], headers=headers)
    _outcome(r, 413, f"at most {card_rules.MAX_MODEL_BYTES}")
    assert registry.stored() == 0


def test_unknown_model_id_is_not_found(registry: Registry) -> None:
    _client(registry, "org-authority").publish(_card(), _arrays())
    for org in ("org-authority", "org-clinic"):
        for path in ("/models/m-0000000000000000", "/models/m-0000000000000000/weights"):
            _outcome(registry.get(org, path), 404, "no model m-0000000000000000")
    path = "/models/m-0000000000000000/publish"
    _outcome(registry.post("org-authority", path, {"published": True}), 404, "no model")
    assert registry.stored() == 1


def test_publish_flag_must_be_a_boolean(registry: Registry) -> None:
    model_id = _client(registry, "org-authority").publish(_card(), _arrays(), publish=False)
    path = f"/models/{model_id}/publish"
    _outcome(registry.post("org-authority", path, {"published": "true"}), 400, "true or false")
    _outcome(registry.post("org-authority", path, ["published"]), 400, "JSON object")
    assert _client(registry, "org-authority").card(model_id)["published"] is False
