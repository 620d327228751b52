"""What a node's ClientApp may send back: the one egress rule for federated training.

A reply carries at most one ArrayRecord (the model's parameters, by name), one MetricRecord of
aggregate numbers from the allow-list below, and one ConfigRecord with the node's org id and a
status/reason. :func:`check_reply` is applied to every reply before it leaves the node, and the
tests apply it to the messages the server receives.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["METRIC_KEYS", "CONFIG_KEYS", "EgressViolation", "check_reply"]

METRIC_KEYS = frozenset(
    {
        "num-examples",  # cohort (train) or test-split size, rounded to 10
        "train-loss",
        "epsilon",
        "delta",
        "noise-multiplier",
        "train-seconds",
        "declined",
        "auroc",
        "auprc",
        "brier",
        "accuracy",
        "log-loss",
        "feature-sum",  # normalisation statistics (benchmark CSVs only): per-column sums
        "feature-sumsq",
        "feature-count",
    }
)
CONFIG_KEYS = frozenset({"org", "status", "reason", "spec"})


class EgressViolation(Exception):
    """A reply would carry something other than model arrays and aggregate metrics."""


def check_reply(content: Any, parameter_names: Collection[str] | None = None) -> None:
    """Raise EgressViolation unless ``content`` (a RecordDict) follows the egress rule."""
    arrays = list(content.array_records.items())
    metrics = list(content.metric_records.items())
    configs = list(content.config_records.items())
    if len(arrays) > 1 or len(metrics) != 1 or len(configs) > 1:
        raise EgressViolation(
            "a reply holds ≤1 ArrayRecord, exactly 1 MetricRecord, ≤1 ConfigRecord"
        )
    if len(arrays) + len(metrics) + len(configs) != len(list(content.keys())):
        raise EgressViolation("a reply holds only array, metric and config records")
    for _, record in arrays:
        if parameter_names is not None and set(record.keys()) != set(parameter_names):
            raise EgressViolation(f"unexpected arrays {sorted(record.keys())}")
    for _, record in metrics:
        extra = set(record.keys()) - METRIC_KEYS
        if extra:
            raise EgressViolation(f"metric(s) {sorted(extra)} are not on the egress allow-list")
    for _, record in configs:
        extra = set(record.keys()) - CONFIG_KEYS
        if extra:
            raise EgressViolation(f"config key(s) {sorted(extra)} are not on the egress allow-list")
        for key, value in record.items():
            if not isinstance(value, str) or len(value) > 300:
                raise EgressViolation(f"config {key!r} must be a short string")
