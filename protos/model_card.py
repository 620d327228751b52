"""The model-card wire contract (JSON): the card and weights of a federated model, as the
authority's ServerApp builds them (``federated.model_card``) and the coordinator's model registry
accepts and serves them (``coordinator.model_registry``). One definition for both sides, which may
not import each other; pure, imports nothing of ours. Every refusal is a :class:`ModelRejected`
whose message names the field.

A card holds at least ``task``, ``feature_spec``, ``rounds``, ``strategy``, ``participants``
(each with ``org``, ``cohort_size_rounded`` — a multiple of 10 —, ``epsilon``, ``delta``) and
``evaluation`` (metric → number or null); producers may add fields (federated adds privacy,
history, drop-outs…). Weights are ``{name: {dtype: "float32", shape: [≤ 4 ints], data: base64 of
the little-endian values}}``, at most :data:`MAX_PARAMETERS` values in all.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "READMISSION_TASK",
    "READMISSION_SPEC",
    "TASKS",
    "WEIGHT_DTYPE",
    "MAX_PARAMETERS",
    "REQUIRED_CARD_FIELDS",
    "PARTICIPANT_FIELDS",
    "ModelRejected",
    "check_card",
    "check_weights",
    "array_bytes",
]

# The tasks a model may be trained for → the feature-spec versions it may be trained on.
# federated.feature_spec implements READMISSION_SPEC; a new spec version is a contract change.
READMISSION_TASK = "readmission-30d"
READMISSION_SPEC = f"{READMISSION_TASK}@1"
TASKS: Mapping[str, frozenset[str]] = {READMISSION_TASK: frozenset({READMISSION_SPEC})}
WEIGHT_DTYPE = "float32"  # little-endian, 4 bytes a value
MAX_PARAMETERS = 1_000_000  # float32 values over all arrays
REQUIRED_CARD_FIELDS = ("task", "feature_spec", "rounds", "strategy", "participants", "evaluation")
PARTICIPANT_FIELDS = ("org", "cohort_size_rounded", "epsilon", "delta")


class ModelRejected(ValueError):
    """A card or weights outside the contract; the message says which field and why."""


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


def array_bytes(name: str, spec: Any) -> tuple[tuple[int, ...], bytes]:
    """One weights entry → (shape, the raw little-endian float32 bytes), checked."""
    where = f"weights[{name!r}]"
    if not isinstance(spec, Mapping) or not {"dtype", "shape", "data"} <= set(spec):
        raise ModelRejected(f"{where} needs dtype, shape and data")
    if spec["dtype"] != WEIGHT_DTYPE:
        raise ModelRejected(f"{where}.dtype must be {WEIGHT_DTYPE!r}")
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
    return tuple(shape), raw


def check_weights(weights: Any) -> dict[str, Any]:
    if not isinstance(weights, Mapping) or not weights:
        raise ModelRejected("weights must be a non-empty object {name: {dtype, shape, data}}")
    total = 0
    for name, spec in weights.items():
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ModelRejected("weight names must be non-empty strings of at most 128 characters")
        total += math.prod(array_bytes(name, spec)[0])
    if total > MAX_PARAMETERS:
        raise ModelRejected(f"the model has {total} values; at most {MAX_PARAMETERS} are accepted")
    return dict(weights)
