"""Regional quality indicators by federated analytics under differential privacy.

Public surface (what the CLI, the demo and the authority console use):

- :func:`load_indicators` / :func:`default_indicators` — the indicator definitions (data).
- :class:`IndicatorQuery` — what an analytics run asks (indicators, period, strata, ε, minimum).
- :func:`tally` — the pure exact count over one node's patients (no noise).
- :func:`release` — a node's noisy, suppressed release of a tally.
- :func:`result_document` — the published result (the JSON the console shows).
- :func:`run_indicators` — the result of a finished run from the authority's results folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from federated.indicators.counting import Period, Tally, tally
from federated.indicators.definitions import (
    IndicatorError,
    IndicatorSet,
    default_indicators,
    load_indicators,
)
from federated.indicators.publish import NodeAnswer, region_rows, result_document
from federated.indicators.query import IndicatorQuery
from federated.indicators.release import release

FORMAT_PREFIX = "ipjms-quality-indicators/"

__all__ = [
    "IndicatorError",
    "IndicatorQuery",
    "IndicatorSet",
    "NodeAnswer",
    "Period",
    "Tally",
    "default_indicators",
    "latest_results",
    "load_indicators",
    "region_rows",
    "release",
    "result_document",
    "tally",
]


def latest_results(superlink_data_dir: Path | str) -> list[dict[str, Any]]:
    """Every completed indicators run's result document under a SuperLink's data dir
    (``runs/*.json``), newest first — what the authority console lists."""
    runs = Path(superlink_data_dir) / "runs"
    docs = []
    for path in sorted(runs.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        result = outcome.get("result") if outcome.get("status") == "completed" else None
        if isinstance(result, dict) and str(result.get("format", "")).startswith(FORMAT_PREFIX):
            docs.append(result)
    return docs
