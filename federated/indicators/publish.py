"""The authority's side, pure: the nodes' noisy counts → the published result document.

:func:`result_document` is what ``ipjms fl indicators`` writes as JSON and what the authority
console shows (one structure, documented in ``federated/indicators/README.md``). Each figure
carries the ε its counts used, the noise scales, a 95 % interval that includes the noise, and
which institutions it covers; a suppressed cell says so and carries no number.

The interval: the noise distributions are public, so the interval for the exact rate inverts
them — the 2.5 and 97.5 percentiles of ``(N − Σe_N) / (D − Σe_D)`` over draws of the nodes'
noise (e ~ discrete Laplace at the stated scales), N and D the released sums. For a count alone
this covers the exact count with probability 0.95; for a ratio it is approximate (measured in
``bench/indicators.py``). It covers the noise only: the target is the exact rate over the
consented records in the period, not a super-population rate.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from federated.indicators.definitions import ALL, Indicator, IndicatorSet
from federated.indicators.mechanism import discrete_laplace_variance
from federated.indicators.query import IndicatorQuery, histograms, metric_key

__all__ = ["NodeAnswer", "result_document", "region_figure", "region_rows", "FORMAT", "CI_DRAWS"]

FORMAT = "ipjms-quality-indicators/1"
CI_DRAWS = 4000
MECHANISM = (
    "discrete Laplace added at each node (exact CKS20 sampler on the OS CSPRNG); pure ε-DP per "
    "node, δ = 0; the unit of privacy is the patient"
)
NOT_COVERED = (
    "which cells are suppressed (the small-cell rule reads exact counts) and which institutions "
    "answered are not protected by ε"
)


@dataclass
class NodeAnswer:
    org: str
    status: str  # ok | declined | dropped
    reason: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)  # metric_key → noisy count
    epsilon: float = 0.0  # what the node says it charged to its ledger


def _bounds(ind: Indicator) -> tuple[float, float]:
    return (0.0, 1.0) if ind.kind == "rate" else (0.0, float(ind.value_cap))


def region_figure(
    ind: Indicator,
    num: int,
    den: int,
    parts: int,
    num_scale: float,
    den_scale: float,
    seed_text: str,
) -> dict[str, Any]:
    """Value, noise sd and 95 % interval of a summed cell (``parts`` nodes' noise)."""
    lo_b, hi_b = _bounds(ind)
    value = min(max(num / den, lo_b), hi_b)
    var_n = parts * discrete_laplace_variance(num_scale)
    var_d = parts * discrete_laplace_variance(den_scale)
    sd = math.sqrt(var_n + value**2 * var_d) / den
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))

    def noise(scale: float) -> np.ndarray:
        p = -math.expm1(-1.0 / scale)
        draws = rng.geometric(p, size=(parts, CI_DRAWS)) - rng.geometric(p, size=(parts, CI_DRAWS))
        return np.asarray(draws.sum(axis=0), dtype=np.float64)

    exact_num = num - noise(num_scale)
    exact_den = np.maximum(den - noise(den_scale), 1.0)
    ratios = np.clip(exact_num / exact_den, lo_b, hi_b)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    digits = 4 if ind.kind == "rate" else 2
    return {
        "value": round(value, digits),
        "ci95": [round(float(lo), digits), round(float(hi), digits)],
        "noise_sd": round(sd, digits + 1),
        "numerator": int(num),
        "denominator": int(den),
    }


def _cell(
    ind: Indicator,
    dim: str,
    value: str,
    answers: Sequence[NodeAnswer],
    scales: tuple[float, float],
    cell_epsilon: float,
    run_label: str,
    scope: str,
) -> dict[str, Any]:
    key_num, key_den = (metric_key(ind.id, dim, value, s) for s in ("num", "den"))
    base: dict[str, Any] = {
        "scope": scope,
        "institution": answers[0].org if scope == "institution" else None,
        "dimension": dim,
        "stratum": value,
        "epsilon": cell_epsilon,
    }
    answered = [a for a in answers if a.status == "ok"]
    released = [a for a in answered if key_num in a.counts and key_den in a.counts]
    if not answered:
        return {**base, "status": "not-answered"}
    if not released:
        return {**base, "status": "suppressed", "reason": "below the minimum count"}
    num = sum(int(a.counts[key_num]) for a in released)
    den = sum(int(a.counts[key_den]) for a in released)
    figure = region_figure(
        ind, num, den, len(released), scales[0], scales[1], f"{run_label}|{scope}|{key_num}"
    )
    out = {**base, "status": "released", **figure}
    if scope == "region":
        out["institutions"] = sorted(a.org for a in released)
        out["suppressed_at"] = sorted(a.org for a in answered if a not in released)
    return out


def result_document(
    query: IndicatorQuery,
    definitions: IndicatorSet,
    answers: Sequence[NodeAnswer],
    *,
    run_id: str = "",
    seconds: float | None = None,
) -> dict[str, Any]:
    """The published indicators (JSON-ready): the region and each institution, per stratum."""
    hists = histograms(query, definitions)
    share = float(hists[0].epsilon)
    scales = {(h.indicator.id, h.dimension, h.side): float(h.scale) for h in hists}
    indicators = []
    for ind_id in query.indicators:
        ind = definitions.get(ind_id)
        dims = query.dimensions(ind)
        cells = []
        for dim in query.dimensions(ind):
            pair = (scales[(ind.id, dim, "num")], scales[(ind.id, dim, "den")])
            for value in definitions.values(dim):
                cells.append(
                    _cell(ind, dim, value, answers, pair, 2 * share, query.run_label, "region")
                )
                for answer in answers:
                    cells.append(
                        _cell(
                            ind,
                            dim,
                            value,
                            [answer],
                            pair,
                            2 * share,
                            query.run_label,
                            "institution",
                        )  # fmt: skip
                    )
        indicators.append(
            {
                "id": ind.id,
                "title": ind.title,
                "kind": ind.kind,
                "unit": ind.unit,
                "numerator_definition": ind.numerator,
                "denominator_definition": ind.denominator,
                "source": dict(ind.source),
                "contribution_cap": ind.contribution_cap,
                "value_cap": ind.value_cap if ind.kind == "mean" else None,
                "noise": {
                    "epsilon_per_cell": 2 * share,
                    "numerator_scale": {d: scales[(ind.id, d, "num")] for d in dims},
                    "denominator_scale": {d: scales[(ind.id, d, "den")] for d in dims},
                },
                "cells": cells,
            }
        )
    return {
        "format": FORMAT,
        "definitions": definitions.version,
        "run_label": query.run_label,
        "flower_run_id": run_id,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else round(seconds, 2),
        "period": {"start": query.period.start.isoformat(), "end": query.period.end.isoformat()},
        "as_of": query.as_of.isoformat(),
        "privacy": {
            "mechanism": MECHANISM,
            "epsilon_per_node": query.epsilon,
            "delta": 0.0,
            "histograms_per_node": len(hists),
            "epsilon_per_count": share,
            "min_count": query.min_count,
            "not_covered": NOT_COVERED,
        },
        "strata": list(query.strata),
        "institutions": [
            {"org": a.org, "status": a.status, "reason": a.reason or None, "epsilon": a.epsilon}
            for a in answers
        ],
        "indicators": indicators,
    }


def region_rows(doc: Mapping[str, Any], dimension: str = ALL) -> list[dict[str, Any]]:
    """The region's cells of one dimension, one row per indicator and stratum (for tables)."""
    rows = []
    for ind in doc["indicators"]:
        for cell in ind["cells"]:
            if cell["scope"] == "region" and cell["dimension"] == dimension:
                rows.append({"indicator": ind["id"], "kind": ind["kind"], **cell})
    return rows
