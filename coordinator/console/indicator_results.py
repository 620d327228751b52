"""The quality indicators as the console shows them: monthly trends per institution.

``read_results`` reads the completed indicators runs that ``ipjms fl indicators`` wrote under the
authority's SuperLink data folder (``runs/*.json``, each ``{"status": "completed", "result":
<result document>}`` — the structure in federated/indicators/README.md). The coordinator may not
import ``federated`` (the independence contract), so this reads the JSON itself; ``trends`` is
pure: the documents → one table per indicator, a row per institution (the region first), a
column per period (a calendar month when the query's period is one), the cell of the whole
population (dimension ``all``) with its figure, ε and 95 % interval, or its status
(``suppressed`` / ``not-answered``) when nothing was released."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["read_results", "trends", "period_label", "IndicatorTrend", "FORMAT_PREFIX"]

FORMAT_PREFIX = "ipjms-quality-indicators/"
MAX_FILES = 500  # the newest run files read per page view
REGION = "region"


def read_results(federated_dir: Path) -> list[dict[str, Any]]:
    """Every completed indicators run's result document, newest first (unreadable files and
    training runs are skipped)."""
    runs = Path(federated_dir) / "runs"
    if not runs.is_dir():
        return []
    files = sorted(runs.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    docs = []
    for path in files[:MAX_FILES]:
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(outcome, dict) or outcome.get("status") != "completed":
            continue
        result = outcome.get("result")
        if isinstance(result, dict) and str(result.get("format", "")).startswith(FORMAT_PREFIX):
            docs.append(result)
    return docs


def period_label(period: dict[str, Any]) -> str:
    """``2026-03`` for a calendar month, else ``start – end`` (dates; the end is exclusive)."""
    start = datetime.fromisoformat(str(period["start"]))
    end = datetime.fromisoformat(str(period["end"]))
    month_end = start.replace(
        year=start.year + (start.month == 12), month=start.month % 12 + 1, day=1
    )
    whole_day = start.time() == end.time() == datetime.min.time()
    if start.day == 1 and whole_day and end == month_end:
        return start.strftime("%Y-%m")
    return f"{start.date().isoformat()} – {end.date().isoformat()}"


@dataclass
class IndicatorTrend:
    id: str
    title: str
    kind: str  # rate | mean
    unit: str
    source: str
    periods: list[str] = field(default_factory=list)  # column labels, oldest first
    rows: list[tuple[str, list[dict[str, Any] | None]]] = field(default_factory=list)


def trends(docs: list[dict[str, Any]]) -> list[IndicatorTrend]:
    """One table per indicator; where two runs cover the same period the newest (first) wins."""
    seen: dict[str, IndicatorTrend] = {}
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}  # (indicator, period, row) → cell
    starts: dict[str, str] = {}
    for doc in docs:
        label = period_label(doc["period"])
        starts.setdefault(label, str(doc["period"]["start"]))
        for ind in doc.get("indicators", []):
            source = ind.get("source") or {}
            seen.setdefault(
                ind["id"],
                IndicatorTrend(
                    id=ind["id"],
                    title=str(ind.get("title", ind["id"])),
                    kind=str(ind.get("kind", "rate")),
                    unit=str(ind.get("unit", "")),
                    source=" ".join(str(v) for v in source.values() if v),
                ),
            )
            for cell in ind.get("cells", []):
                if cell.get("dimension") != "all":
                    continue
                row = REGION if cell.get("scope") == "region" else str(cell.get("institution"))
                cells.setdefault((ind["id"], label, row), {**cell, "run_label": doc["run_label"]})
    for ind_id, trend in seen.items():
        trend.periods = sorted(
            {p for i, p, _ in cells if i == ind_id}, key=lambda p: (starts[p], p)
        )
        institutions = sorted({r for i, _, r in cells if i == ind_id and r != REGION})
        for row in [REGION, *institutions]:
            trend.rows.append((row, [cells.get((ind_id, p, row)) for p in trend.periods]))
    return list(seen.values())
