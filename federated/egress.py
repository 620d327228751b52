"""What a node's ClientApp may send back: the one egress rule for federated training.

A reply carries at most one ArrayRecord (the model's parameters: exactly the names and shapes the
server sent), one MetricRecord of aggregate numbers from the allow-list below, and at most one
ConfigRecord with the node's org id, a status and — for a decline — a reason from the fixed list
of decline reasons. Scalar metrics are single numbers; only the normalisation statistics
are vectors, one entry per model feature (never one per patient); counts leave rounded to 10.
Nothing in a reply is free text. :func:`check_reply` is applied to every reply before it leaves
the node (:mod:`federated.client_app`) and again by the server to every reply it receives
(:mod:`federated.server_loop`), which refuses a violating reply like a dropped node's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trust.certificates import ORG_ID_PATTERN

__all__ = [
    "METRIC_KEYS",
    "VECTOR_METRIC_KEYS",
    "CONFIG_KEYS",
    "DECLINE_REASONS",
    "EgressViolation",
    "check_reply",
    "check_indicator_reply",
    "decline_reason_allowed",
]

VECTOR_METRIC_KEYS = frozenset(
    {
        "feature-sum",  # normalisation statistics (benchmark CSVs only): per-column sums
        "feature-sumsq",
        "feature-count",
    }
)
METRIC_KEYS = (
    frozenset(
        {
            "num-examples",  # cohort (train) or test-split size, rounded to 10
            "events",  # outcome events of the evaluation, rounded to 10
            # no "train-loss": with lr = 0 and q = 1 it was an exact query on the training data
            "epsilon",  # per patient, spent so far (train) / of this release (evaluate)
            "delta",
            "noise-multiplier",  # σ of patient-level DP-SGD
            "sample-rate",  # q: Poisson rate over patients (from the count rounded to 10)
            "steps",  # DP-SGD steps of this round
            "train-seconds",
            "declined",
            "auroc",
            "auprc",
            "brier",
            "accuracy",
            "log-loss",
            # the node's own privacy-budget ledger after this reply (federated/budget.py): ε and
            # δ used over all its runs and releases, and its budgets — so the authority's console
            # can show each node's remaining budget (numbers the node chose to publish, no data)
            "budget-epsilon-used",
            "budget-epsilon",
            "budget-delta-used",
            "budget-delta",
        }
    )
    | VECTOR_METRIC_KEYS
)
CONFIG_KEYS = frozenset({"org", "status", "reason", "spec"})
ROUNDED_COUNT = 10  # counts that leave a node are multiples of this (datasets.round_count)

# The only reasons a node may give for declining (client_app.py and budget.py word them): numbers
# in fixed sentences, nothing a node could fill with other text.
DECLINE_REASONS = (
    re.compile(  # the count is rounded to 10 (never the exact number of eligible patients)
        r"cohort too small: about \d{1,8}0 eligible patients, this node needs at least \d{1,9}"
    ),
    re.compile(r"cohort has no positive or no negative training samples"),
    re.compile(
        r"privacy budget spent: used \d{1,6}\.\d\d of \d{1,6}\.\d\d "
        r"\(this run asks for ε=\d{1,6}\.\d\d\)"
    ),
    re.compile(
        r"privacy budget spent: used δ \d\.\de[-+]\d\d of \d\.\de[-+]\d\d "
        r"\(this run asks for δ=\d\.\de[-+]\d\d\)"
    ),
    # the node's own privacy policy (federated/node_policy.py, federated/client_app.py)
    re.compile(r"task not allowed by this node's privacy policy"),
    re.compile(r"this node requires differential privacy \(ε > 0\)"),
    re.compile(r"ε per run above this node's maximum of \d{1,6}\.\d\d"),
    re.compile(r"run parameters changed after the run's first message"),
    re.compile(r"more rounds than the run announced"),
    re.compile(r"this round would exceed the run's privacy reservation"),
    re.compile(r"evaluation is off at this node"),
    re.compile(r"evaluation limit of this run reached"),
    re.compile(r"queries are off at this node"),
    # quality indicators (federated/indicators/node_answer.py)
    re.compile(r"indicator query asks for ε=\d{1,6}\.\d\d, this node allows at most \d{1,6}\.\d\d"),
    re.compile(r"indicator query not answerable with this node's definitions"),
)
_SPEC = re.compile(r"[a-z0-9][a-z0-9-]{0,40}@\d{1,4}")  # a feature spec id, e.g. readmission-30d@1
_STATUS = frozenset({"ok", "declined"})


class EgressViolation(Exception):
    """A reply would carry something other than model arrays and aggregate metrics."""


def decline_reason_allowed(reason: str) -> bool:
    return any(p.fullmatch(reason) for p in DECLINE_REASONS)


def check_reply(
    content: Any,
    arrays: Mapping[str, Sequence[int]] | None = None,
    n_features: int | None = None,
) -> None:
    """Raise EgressViolation unless ``content`` (a RecordDict) follows the egress rule.

    ``arrays``: the model parameters the server sent, name → shape; a reply may carry exactly
    those back (``None``: no arrays at all). ``n_features``: the length of the per-column
    normalisation vectors (``None``: no vectors at all).
    """
    array_recs = list(content.array_records.items())
    metric_recs = list(content.metric_records.items())
    config_recs = list(content.config_records.items())
    if len(array_recs) > 1 or len(metric_recs) != 1 or len(config_recs) > 1:
        raise EgressViolation(
            "a reply holds ≤1 ArrayRecord, exactly 1 MetricRecord, ≤1 ConfigRecord"
        )
    if len(array_recs) + len(metric_recs) + len(config_recs) != len(list(content.keys())):
        raise EgressViolation("a reply holds only array, metric and config records")
    for _, record in array_recs:
        _check_arrays(record, arrays)
    _check_metrics(metric_recs[0][1], n_features)
    for _, record in config_recs:
        _check_config(record)


def _check_arrays(record: Any, expected: Mapping[str, Sequence[int]] | None) -> None:
    if expected is None:
        raise EgressViolation("this reply may carry no arrays")
    if set(record.keys()) != set(expected):
        raise EgressViolation(f"unexpected arrays {sorted(record.keys())}")
    for name, array in record.items():
        if tuple(array.shape) != tuple(expected[name]):
            raise EgressViolation(f"array {name!r} has shape {list(array.shape)}, not the model's")


def _check_metrics(record: Any, n_features: int | None) -> None:
    extra = set(record.keys()) - METRIC_KEYS
    if extra:
        raise EgressViolation(f"metric(s) {sorted(extra)} are not on the egress allow-list")
    for key, value in record.items():
        if key in VECTOR_METRIC_KEYS:
            if n_features is None or not isinstance(value, list) or len(value) != n_features:
                raise EgressViolation(f"metric {key!r} must be one number per model feature")
            numbers = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise EgressViolation(f"metric {key!r} must be a single number")
        else:
            numbers = [value]
        if not all(_number(v) for v in numbers):
            raise EgressViolation(f"metric {key!r} must be numbers (NaN: not measured)")
    for key in ("num-examples", "events"):
        count = record.get(key, 0)
        if int(count) != count or int(count) < 0 or int(count) % ROUNDED_COUNT:
            raise EgressViolation(f"{key} must be a count rounded to {ROUNDED_COUNT}")
    if record.get("declined", 0) not in (0, 1):
        raise EgressViolation("declined must be 0 or 1")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isinf(value)


def _check_config(record: Any) -> None:
    extra = set(record.keys()) - CONFIG_KEYS
    if extra:
        raise EgressViolation(f"config key(s) {sorted(extra)} are not on the egress allow-list")
    for key, value in record.items():
        if not isinstance(value, str):
            raise EgressViolation(f"config {key!r} must be a string")
    if "org" in record and not ORG_ID_PATTERN.fullmatch(str(record["org"])):
        raise EgressViolation("config 'org' must be an organisation id")
    if "spec" in record and not _SPEC.fullmatch(str(record["spec"])):
        raise EgressViolation("config 'spec' must be a feature spec id")
    status = record.get("status")
    if status is not None and status not in _STATUS:
        raise EgressViolation(f"config 'status' must be one of {sorted(_STATUS)}")
    if "reason" in record:
        if status != "declined":
            raise EgressViolation("only a decline carries a reason")
        if not decline_reason_allowed(str(record["reason"])):
            raise EgressViolation("a decline reason must be one of the fixed decline reasons")


def check_indicator_reply(content: Any, allowed_counts: frozenset[str]) -> None:
    """Raise EgressViolation unless ``content`` is a quality-indicator answer: exactly one
    MetricRecord of integer noisy counts whose names are among ``allowed_counts`` (the cells
    the query asked for; a suppressed cell is absent), plus ``epsilon`` (what the node charged)
    and ``declined``; at most one ConfigRecord as for training. No arrays, no free text."""
    if list(content.array_records.keys()):
        raise EgressViolation("an indicator answer carries no arrays")
    metric_recs = list(content.metric_records.items())
    config_recs = list(content.config_records.items())
    if len(metric_recs) != 1 or len(config_recs) > 1:
        raise EgressViolation("an indicator answer holds 1 MetricRecord and ≤1 ConfigRecord")
    if len(metric_recs) + len(config_recs) != len(list(content.keys())):
        raise EgressViolation("an indicator answer holds only metric and config records")
    record = metric_recs[0][1]
    for key, value in record.items():
        if key in ("epsilon", "declined"):
            if not _number(value):
                raise EgressViolation(f"metric {key!r} must be a single number")
            continue
        if key not in allowed_counts:
            raise EgressViolation(f"count {key!r} was not asked for")
        if isinstance(value, bool) or not isinstance(value, int):
            raise EgressViolation(f"count {key!r} must be an integer")
    if record.get("declined", 0) not in (0, 1):
        raise EgressViolation("declined must be 0 or 1")
    for _, cfg in config_recs:
        _check_config(cfg)
