"""Each node's remaining privacy budget on the console's runs page (issue 16): real federated
runs (the real ServerApp ``execute`` and ClientApp on the in-process grid, CSV nodes with their
own SQLite ledgers) write the nodes' ledger reports into the SuperLink's run files; the page
shows, per node, the ε and δ its own ledger says are spent and remaining — read back here from
each node's ledger, not from the run's ε (a node with an earlier analytics charge shows more
spent than the run cost). A second run that a node declines for lack of budget fails, and the
page shows that node's figures from the decline."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import numpy as np
import pytest
from console_client import _client, _csrf
from fastapi.testclient import TestClient

from federated.client_app import app as client_app
from federated.client_app import ledger_for
from federated.local_grid import LocalGrid
from federated.run_plan import RunPlan
from federated.server_app import execute
from federated.server_loop import RunFailed

ORGS = ("org-hosp-a", "org-hosp-b")


def _csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "y"])
        w.writerows([[*row, label] for row, label in zip(x.tolist(), y.tolist(), strict=True)])
    return path


def _configs(tmp_path: Path) -> dict[int, dict[str, object]]:
    return {
        i: {
            "source": "csv",
            "csv-path": str(_csv(tmp_path / f"{org}.csv", 120, i)),
            "label": "y",
            "org-id": org,
            "data-dir": str(tmp_path / f"ledger-{org}"),
            "epsilon-budget": 5.0 if i == 1 else 9.0,
            "max-epsilon-run": 5.0,
            "allow-query": True,
        }
        for i, org in enumerate(ORGS, start=1)
    }


def _run(grid: LocalGrid, superlink: Path, label: str, epsilon: float) -> None:
    plan = RunPlan(
        task="csv", rounds=1, epsilon=epsilon, n_features=3, normalise=True, min_nodes=2, lr=0.3
    )
    config = {**plan.to_run_config(), "run-label": label, "results-dir": str(superlink / "runs")}
    execute(grid, config)


def _row(page: str, org: str) -> dict[str, str]:
    m = re.search(rf'<tr data-org="{org}">(.*?)</tr>', page, re.S)
    assert m, f"no budget row for {org}"
    cells = dict(re.findall(r'<td class="([a-z-]+)">(.*?)</td>', m.group(1), re.S))
    return {k: html.unescape(" ".join(v.split())) for k, v in cells.items()}


def _expected(config: dict[str, object]) -> dict[str, str]:
    ledger = ledger_for(config)
    try:
        used, left = ledger.usage(), ledger.remaining()
        return {
            "eps-spent": f"{used.epsilon:.2f}",
            "eps-remaining": f"{left.epsilon:.2f} / {ledger.budget:.2f}",
            "delta-spent": f"{used.delta:.1e}",
            "delta-remaining": f"{left.delta:.1e} / {ledger.delta_budget:.1e}",
        }
    finally:
        ledger.engine.dispose()


@pytest.fixture()
def console(tmp_path: Path) -> TestClient:
    return _client(tmp_path, tmp_path / "superlink")


def test_runs_page_shows_each_nodes_ledger(console: TestClient, tmp_path: Path) -> None:
    superlink = tmp_path / "superlink"
    empty = console.get("/console/runs")
    assert 'id="no-budgets"' in empty.text and 'id="node-budgets"' not in empty.text

    configs = _configs(tmp_path)
    # node b spent ε 1.5 on an analytics release before: its ledger, not the run, is the truth
    ledger = ledger_for(configs[2])
    ledger.charge("query-1", 1.5, 0.0, kind="analytics")
    ledger.engine.dispose()

    grid = LocalGrid(client_app, configs)
    _run(grid, superlink, "first", 2.0)
    page = console.get("/console/runs")
    assert page.status_code == 200 and 'id="node-budgets"' in page.text
    a, b = (_row(page.text, org) for org in ORGS)
    assert a == {**a, **_expected(configs[1])}
    assert b == {**b, **_expected(configs[2])}
    assert a["eps-spent"] == "2.00" and b["eps-spent"] == "3.50"  # 2.0 run (+ 1.5 analytics)
    assert a["eps-remaining"] == "3.00 / 5.00" and b["eps-remaining"] == "5.50 / 9.00"

    # a second 4-ε run: node a (2 of 5 spent) cannot afford it and declines; the run fails and
    # node a's figures come from its decline; node b (trained) reports after its reservation
    with pytest.raises(RunFailed):
        _run(grid.new_run(), superlink, "second", 4.0)
    page = console.get("/console/runs")
    a, b = (_row(page.text, org) for org in ORGS)
    assert a == {**a, **_expected(configs[1])} and a["eps-spent"] == "2.00"
    assert b == {**b, **_expected(configs[2])} and b["eps-spent"] == "7.50"
    rows = re.findall(r'<tr data-org="([^"]+)">.*?<td>(\S+) ·', page.text, re.S)
    assert rows == [(ORGS[0], "second"), (ORGS[1], "second")]

    assert "各节点的隐私预算" in page.text and "剩余 ε" in page.text  # zh-CN, the default
    assert a["eps-remaining"] == "3.00 / 5.00" and b["eps-remaining"] == "1.50 / 9.00"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    r = console.post("/console/language", data={"lang": "en", "next": "/console/runs",
                     "csrf_token": _csrf(console, "/console/runs")})  # fmt: skip
    assert r.status_code == 200 and "privacy budget" in r.text and "ε remaining" in r.text
    en = {k: v.replace(" of ", " / ") for k, v in _row(r.text, ORGS[0]).items()}
    assert en == a
