"""The console's quality indicators page (issues 16, 18): result documents made by the real
``federated.indicators.publish.result_document`` from fabricated node answers, written where
``ipjms fl indicators`` writes them (``<superlink dir>/runs/<label>.json``), rendered through the
real console (``install_console`` on a FastAPI app, TestClient, an analyst signed in with the
CSRF token): monthly columns, a row per institution and the region, each figure with its ε and
95 % interval, suppressed cells said as such, both languages, the CSP header; "no runs yet" and
"not configured" otherwise; no page without signing in."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from console_client import _client, _csrf
from fastapi.testclient import TestClient

from coordinator.console.indicator_results import period_label
from federated.indicators import IndicatorQuery, default_indicators
from federated.indicators.counting import Period
from federated.indicators.publish import NodeAnswer, result_document
from federated.indicators.query import metric_key

DEFS = default_indicators()
IND = "htn-control"


def _doc(label: str, month: int, answers: list[NodeAnswer]) -> dict[str, Any]:
    period = Period(datetime(2026, month, 1, tzinfo=UTC), datetime(2026, month + 1, 1, tzinfo=UTC))
    query = IndicatorQuery(
        indicators=(IND,), period=period, as_of=datetime(2026, 9, 1, tzinfo=UTC), epsilon=1.0,
        min_count=5, run_label=label,
    )  # fmt: skip
    return result_document(query, DEFS, answers, run_id=f"flwr-{label}", seconds=1.0)


def _ok(org: str, num: int, den: int) -> NodeAnswer:
    keys = (metric_key(IND, "all", "all", "num"), metric_key(IND, "all", "all", "den"))
    return NodeAnswer(org, "ok", counts=dict(zip(keys, (num, den), strict=True)), epsilon=1.0)


def _write(folder: Path, name: str, outcome: dict[str, Any]) -> None:
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{name}.json").write_text(json.dumps(outcome))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    folder = tmp_path_factory.mktemp("superlink")
    jan = _doc(
        "ind-jan", 1, [_ok("org-hosp-a", 30, 40), NodeAnswer("org-clinic-b", "ok", epsilon=1.0)]
    )  # fmt: skip  (clinic-b released nothing: its cell was too small)
    feb = _doc("ind-feb", 2, [_ok("org-hosp-a", 28, 41), _ok("org-clinic-b", 12, 20)])
    _write(folder, "ind-jan", {"status": "completed", "run_label": "ind-jan", "result": jan})
    _write(folder, "ind-feb", {"status": "completed", "run_label": "ind-feb", "result": feb})
    # a training run and a broken file in the same folder are not indicators: skipped
    _write(folder, "train-1", {"status": "completed", "run_label": "train-1", "card": {}})
    (folder / "runs" / "broken.json").write_text("{not json")
    return folder, jan, feb


def _cell(doc: dict[str, Any], org: str | None) -> dict[str, Any]:
    (ind,) = doc["indicators"]
    scope = "region" if org is None else "institution"
    return next(c for c in ind["cells"] if c["dimension"] == "all" and c["scope"] == scope
                and c["institution"] == org)  # fmt: skip


def _row(html: str, row: str) -> str:
    match = re.search(rf'<tr data-row="{re.escape(row)}">(.*?)</tr>', html, re.S)
    assert match, row
    return match.group(1)


def test_indicators_page_shows_monthly_figures_per_institution(runs: Any, tmp_path: Path) -> None:
    folder, jan, feb = runs
    assert _cell(jan, "org-clinic-b")["status"] == "suppressed"
    assert _cell(jan, "org-hosp-a")["status"] == "released"
    client = _client(tmp_path, folder)
    r = client.get("/console/indicators")
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "质量指标" in html  # zh-CN, the region's default
    section = html[html.index(f'id="ind-{IND}"') :]
    assert section.index("2026-01") < section.index("2026-02")  # months, oldest first
    for org, doc in (("org-hosp-a", jan), ("org-hosp-a", feb), ("org-clinic-b", feb),
                     (None, jan), (None, feb)):  # fmt: skip
        cell = _cell(doc, org)
        lo, hi = cell["ci95"]
        row = _row(html, org or "region")
        assert f"{cell['value'] * 100:.1f} %" in row
        assert f"{lo * 100:.1f}–{hi * 100:.1f} %" in row
        assert f"ε {cell['epsilon']:.3g}" in row
    jan_clinic = _row(html, "org-clinic-b").split("<td>")[1]
    assert "已抑制" in jan_clinic and "%" not in jan_clinic
    assert "train-1" not in html and "ind-jan" in html and "ind-feb" in html

    r = client.post("/console/language", data={"lang": "en", "next": "/console/indicators",
                    "csrf_token": _csrf(client, "/console/indicators")})  # fmt: skip
    assert r.status_code == 200 and "Quality indicators" in r.text
    assert "suppressed (fewer than the minimum count)" in _row(r.text, "org-clinic-b")


def test_no_runs_not_configured_and_not_signed_in(tmp_path: Path) -> None:
    empty = _client(tmp_path / "a", tmp_path / "superlink")
    r = empty.get("/console/indicators")
    assert r.status_code == 200 and 'id="no-runs"' in r.text and "尚无指标运行" in r.text
    unset = _client(tmp_path / "b", None)
    assert "console_federated_dir" in unset.get("/console/indicators").text
    anonymous = TestClient(unset.app).get("/console/indicators", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/sign-in"


def test_period_labels() -> None:
    def label(start: str, end: str) -> str:
        return period_label({"start": f"{start}T00:00:00+00:00", "end": f"{end}T00:00:00+00:00"})

    assert label("2026-12-01", "2027-01-01") == "2026-12"
    assert label("2026-02-01", "2026-03-01") == "2026-02"
    assert label("2025-01-01", "2026-01-01") == "2025-01-01 – 2026-01-01"
    assert label("2026-02-02", "2026-03-01") == "2026-02-02 – 2026-03-01"
