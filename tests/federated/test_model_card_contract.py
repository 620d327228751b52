"""The model-card wire contract (protos.model_card) is the one both sides use: the card the
authority's ServerApp builds passes it, the task and feature spec federated trains are the ones it
names, and a node decoding fetched weights refuses exactly what the registry refuses on upload."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from federated.feature_spec import SPEC_ID, TASK
from federated.model_card import build_card, decode_weights, encode_weights
from federated.run_plan import TASKS, RunPlan
from federated.server_loop import NodeRecord, RunResult
from protos.model_card import MAX_PARAMETERS, ModelRejected, check_card, check_weights
from protos.model_card import TASKS as CARD_TASKS

ARRAYS = {
    "linear.weight": np.arange(26, dtype=np.float32).reshape(1, 26),
    "linear.bias": np.array([-1.25], dtype=np.float32),
}


def _card(**plan: object) -> dict:
    metrics = {"auroc": 0.7, "brier": 0.2}
    nodes = {1: NodeRecord("org-a", 1, [1, 2], 1234, 400, 2.9, 1e-4, 1.0, 0.4, metrics)}
    result = RunResult(RunPlan(rounds=2, **plan), ARRAYS, nodes=nodes, final_metrics=metrics)  # type: ignore[arg-type]
    return build_card(result, run_id="7")


def test_the_card_federated_builds_is_one_the_contract_accepts() -> None:
    card = _card()
    assert check_card(card) == card
    assert (card["task"], card["feature_spec"]) == (TASK, SPEC_ID)
    assert card["participants"][0]["cohort_size_rounded"] == 1230


def test_federated_trains_only_tasks_and_specs_the_contract_names() -> None:
    assert TASKS and all(spec in CARD_TASKS[task] for task, (spec, _n) in TASKS.items())


def test_weights_round_trip_through_the_contract_form() -> None:
    wire = encode_weights(ARRAYS)
    assert check_weights(wire) == wire
    back = decode_weights(wire)
    assert all(np.array_equal(back[k], ARRAYS[k]) for k in ARRAYS)


_ONE = {"dtype": "float32", "shape": [1], "data": base64.b64encode(b"\0" * 4).decode()}


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        ({}, "non-empty object"),
        ({"w": {**_ONE, "dtype": "float64"}}, "dtype must be 'float32'"),
        ({"w": {"dtype": "float32", "shape": [1]}}, "needs dtype, shape and data"),
        ({"w": {**_ONE, "shape": [2]}}, "do not fit shape"),
        ({"w": {**_ONE, "data": "not base64!"}}, "not valid base64"),
        ({"w": {**_ONE, "shape": [-1]}}, "non-negative integers"),
        ({"w": {**_ONE, "shape": [MAX_PARAMETERS + 1]}}, f"at most {MAX_PARAMETERS}"),
    ],
)
def test_a_node_refuses_fetched_weights_the_registry_would_refuse(
    weights: dict, fragment: str
) -> None:
    with pytest.raises(ModelRejected, match=fragment):
        check_weights(weights)
    with pytest.raises(ModelRejected, match=fragment):
        decode_weights(weights)
