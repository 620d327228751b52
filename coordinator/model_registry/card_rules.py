"""What the model registry accepts (pure): a model card and its weights, checked before anything
is stored. Every refusal is a :class:`ModelRejected` whose message names the field.

The tasks and the feature-spec versions the registry knows are the federated area's
(``federated.run_plan.TASKS``); the coordinator may not import ``federated``, so they are listed
here and a test checks that every task and spec federated can train is accepted here.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TASKS", "MAX_MODEL_BYTES", "ModelRejected", "ModelUpload", "check_upload"]

# task → feature-spec versions a model of that task may be trained on
TASKS: dict[str, frozenset[str]] = {"readmission-30d": frozenset({"readmission-30d@1"})}
MAX_MODEL_BYTES = 16 * 1024 * 1024  # the whole upload (card + base64 weights)
MAX_PARAMETERS = 1_000_000  # float32 values over all arrays
REQUIRED_CARD_FIELDS = ("task", "feature_spec", "rounds", "strategy", "participants", "evaluation")
PARTICIPANT_FIELDS = ("org", "cohort_size_rounded", "epsilon", "delta")


class ModelRejected(ValueError):
    """The upload is not a model the registry stores; the message says which field and why."""


@dataclass(frozen=True)
class ModelUpload:
    card: dict[str, Any]
    weights: dict[str, Any]
    published: bool


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_participant(i: int, p: Any) -> None:
    where = f"card.participants[{i}]"
    if not isinstance(p, Mapping):
        raise ModelRejected(f"{where} must be an object")
    for key in PARTICIPANT_FIELDS:
        if key not in p:
            raise ModelRejected(f"{where} lacks {key!r}")
    if not isinstance(p["org"], str) or not p["org"]:
        raise ModelRejected(f"{where}.org must be an organisation id")
    size = p["cohort_size_rounded"]
    if not _is_count(size) or size % 10:
        raise ModelRejected(f"{where}.cohort_size_rounded must be a count rounded to 10")
    for key in ("epsilon", "delta"):
        v = p[key]
        if v is not None and (not _is_number(v) or v < 0):
            raise ModelRejected(f"{where}.{key} must be a non-negative number or null")


def check_card(card: Any) -> dict[str, Any]:
    if not isinstance(card, Mapping):
        raise ModelRejected("card must be an object")
    for key in REQUIRED_CARD_FIELDS:
        if key not in card:
            raise ModelRejected(f"model card lacks {key!r}")
    task, spec = card["task"], card["feature_spec"]
    if task not in TASKS:
        raise ModelRejected(f"card.task {task!r} is not a known task; known: {', '.join(TASKS)}")
    if spec not in TASKS[task]:
        raise ModelRejected(
            f"card.feature_spec {spec!r} is not a feature spec of {task}; "
            f"known: {', '.join(sorted(TASKS[task]))}"
        )
    if not _is_count(card["rounds"]) or card["rounds"] < 1:
        raise ModelRejected("card.rounds must be a positive integer")
    if not isinstance(card["strategy"], str) or not card["strategy"]:
        raise ModelRejected("card.strategy must be a strategy name")
    participants = card["participants"]
    if not isinstance(participants, list) or not participants:
        raise ModelRejected("card.participants must be a non-empty list")
    for i, p in enumerate(participants):
        _check_participant(i, p)
    evaluation = card["evaluation"]
    if not isinstance(evaluation, Mapping) or not all(
        isinstance(k, str) and (v is None or _is_number(v)) for k, v in evaluation.items()
    ):
        raise ModelRejected("card.evaluation must map metric names to numbers (or null)")
    return dict(card)


def _check_array(name: str, spec: Any) -> int:
    where = f"weights[{name!r}]"
    if not isinstance(spec, Mapping) or not {"dtype", "shape", "data"} <= set(spec):
        raise ModelRejected(f"{where} needs dtype, shape and data")
    if spec["dtype"] != "float32":
        raise ModelRejected(f"{where}.dtype must be 'float32'")
    shape = spec["shape"]
    if not isinstance(shape, list) or len(shape) > 4 or not all(_is_count(s) for s in shape):
        raise ModelRejected(f"{where}.shape must be a list of at most 4 non-negative integers")
    values = math.prod(shape)
    if values > MAX_PARAMETERS:
        raise ModelRejected(f"{where} has {values} values; at most {MAX_PARAMETERS} are accepted")
    if not isinstance(spec["data"], str):
        raise ModelRejected(f"{where}.data must be base64 text")
    try:
        raw = base64.b64decode(spec["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ModelRejected(f"{where}.data is not valid base64") from None
    if len(raw) != 4 * values:
        raise ModelRejected(f"{where}: {len(raw)} bytes do not fit shape {shape} (float32)")
    return values


def check_weights(weights: Any) -> dict[str, Any]:
    if not isinstance(weights, Mapping) or not weights:
        raise ModelRejected("weights must be a non-empty object {name: {dtype, shape, data}}")
    total = 0
    for name, spec in weights.items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ModelRejected("weight names must be non-empty strings of at most 128 characters")
        total += _check_array(name, spec)
    if total > MAX_PARAMETERS:
        raise ModelRejected(f"the model has {total} values; at most {MAX_PARAMETERS} are accepted")
    return dict(weights)


def check_published(body: Mapping[str, Any], default: bool) -> bool:
    flag = body.get("published", default)
    if not isinstance(flag, bool):
        raise ModelRejected("published must be true or false")
    return flag


def check_upload(body: Any) -> ModelUpload:
    """The body of ``POST /models``: ``{card, weights, published?}``."""
    if not isinstance(body, Mapping):
        raise ModelRejected("body must be a JSON object {card, weights, published}")
    if "card" not in body or "weights" not in body:
        raise ModelRejected("card and weights are required")
    return ModelUpload(
        check_card(body["card"]), check_weights(body["weights"]), check_published(body, True)
    )
