"""``ipjms fl bench``: local vs federated vs DP-federated vs pooled, per centre and on average.

Federated methods run the real ServerApp round loop and ClientApp over an in-process grid
(:mod:`federated.local_grid`), each centre as one node reading its own CSV. The local and pooled
baselines train the same model with the same optimiser settings for the same number of epochs
(rounds × local epochs) directly. Every method is evaluated on each centre's held-out split
(seeded, stratified — the split the ClientApp makes too).
"""

from __future__ import annotations

import logging
import math
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from federated.datasets import CentreTable, read_bench_folder, split_table
from federated.run_plan import RunPlan

__all__ = ["BenchRow", "run_bench", "bench_methods", "bench_node_config", "DEFAULT_PLAN"]

FLOWER_LOGGER_NAME = "flwr"

DEFAULT_PLAN = RunPlan(
    task="csv",
    rounds=10,
    local_epochs=2,
    lr=0.3,
    batch_size=128,
    max_grad_norm=1.0,
    model="logreg",
    normalise=True,
    min_nodes=1,
    server_lr=0.05,
)


@dataclass(frozen=True)
class BenchRow:
    method: str
    centre: str
    accuracy: float
    auroc: float
    epsilon: float | None

    def as_json(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v is None or math.isnan(v) else round(float(v), 4)

        return {
            "method": self.method,
            "centre": self.centre,
            "accuracy": clean(self.accuracy),
            "auroc": clean(self.auroc),
            "epsilon": self.epsilon,
        }


def _split(t: CentreTable, plan: RunPlan) -> tuple[np.ndarray, np.ndarray]:
    return split_table(t.y, t.groups, plan.test_fraction, plan.split_seed)


def bench_node_config(
    table_path: Path,
    label: str,
    org: str,
    data_dir: Path,
    plan: RunPlan,
    *,
    group: str | None = None,
    na_values: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A bench node's config: its own CSV, so its policy may allow exact evaluation and the
    normalisation sums; DP off for the non-private baselines; the bench's split (the local
    and pooled baselines use the same one); with ``group`` the patient is the privacy unit."""
    return {
        "source": "csv",
        "csv-path": str(table_path),
        "label": label,
        "org-id": org,
        "data-dir": str(data_dir),
        "epsilon-budget": 1e6,
        "delta-budget": 0.5,
        "max-epsilon-run": 1e3,
        "dp-required": False,
        "evaluation": "exact",
        "allow-query": True,
        "test-fraction": plan.test_fraction,
        "split-seed": plan.split_seed,
        "dp-seed": plan.seed,  # a repeatable bench table; deployments keep the noise secret
        **({"group-column": group} if group else {}),
        **({"na-values": ",".join(na_values)} if na_values else {}),
    }


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(x, axis=0)
    var = np.nanvar(x, axis=0)
    sd = np.where(var > 1e-12, np.sqrt(var), 1.0)
    return np.nan_to_num(mean), sd


def _scale(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return np.nan_to_num((x - mean) / sd, nan=0.0).astype(np.float32)


def _central(
    train_x: np.ndarray,
    train_y: np.ndarray,
    plan: RunPlan,
    tests: list[tuple[str, np.ndarray, np.ndarray]],
) -> list[tuple[str, dict[str, float]]]:
    from federated.models import make_model
    from federated.training import TrainConfig, evaluate, train

    mean, sd = _moments(train_x)
    model = make_model(plan.model, train_x.shape[1], seed=plan.seed)
    train(
        model,
        _scale(train_x, mean, sd),
        train_y,
        TrainConfig(
            epochs=plan.rounds * plan.local_epochs,
            lr=plan.lr,
            batch_size=plan.batch_size,
            seed=plan.seed,
        ),
    )
    return [(name, evaluate(model, _scale(x, mean, sd), y)) for name, x, y in tests]


def _federated(
    tables: list[CentreTable],
    label: str,
    plan: RunPlan,
    ledger_dir: Path,
    na_values: Sequence[str] | None,
    group: str | None = None,
) -> dict[str, dict[str, float]]:
    from federated.client_app import app as client_app
    from federated.local_grid import LocalGrid
    from federated.server_loop import run_federated

    configs = {
        i + 1: bench_node_config(
            t.path, label, t.name, ledger_dir / t.name, plan, group=group, na_values=na_values
        )
        for i, t in enumerate(tables)
    }
    grid = LocalGrid(client_app, configs)
    result = run_federated(grid, replace(plan, run_label=uuid.uuid4().hex), report=lambda _l: None)
    out = {}
    for node in result.participants():
        out[node.org] = {**node.metrics, "epsilon": node.epsilon}
    return out


def bench_methods(plan: RunPlan) -> list[tuple[str, RunPlan | None]]:
    """(method name, federated plan or None for a central baseline)."""
    fed = replace(plan, strategy="fedavg", epsilon=0.0)
    return [
        ("local", None),
        ("fedavg", fed),
        ("fedavg+dp eps=1", replace(fed, epsilon=1.0)),
        ("fedavg+dp eps=3", replace(fed, epsilon=3.0)),
        ("fedavg+dp eps=8", replace(fed, epsilon=8.0)),
        ("fedadam", replace(fed, strategy="fedadam")),
        ("pooled", None),
    ]


def run_bench(
    folder: Path,
    label: str,
    *,
    na_values: Sequence[str] | None = None,
    plan: RunPlan = DEFAULT_PLAN,
    progress: Callable[[str], None] = lambda _m: None,
    group: str | None = None,
) -> list[BenchRow]:
    """``group``: the CSVs' patient column (not a feature): splits by patient and DP with the
    patient as the unit; without it every row is its own patient."""
    import flwr.common.logger  # noqa: F401 - configures the "flwr" logger; quiet it after

    logging.getLogger(FLOWER_LOGGER_NAME).setLevel(logging.WARNING)
    tables = (
        read_bench_folder(folder, label, na_values, group)
        if na_values
        else read_bench_folder(folder, label, group=group)
    )
    plan = replace(plan, n_features=len(tables[0].columns), task="csv", normalise=True)
    splits = {t.name: _split(t, plan) for t in tables}
    tests = [(t.name, t.x[splits[t.name][1]], t.y[splits[t.name][1]]) for t in tables]
    rows: list[BenchRow] = []

    def add(method: str, per_centre: dict[str, dict[str, float]], eps: float | None) -> None:
        accs, aucs = [], []
        for t in tables:
            m = per_centre.get(t.name, {})
            acc, auc = m.get("accuracy", math.nan), m.get("auroc", math.nan)
            rows.append(BenchRow(method, t.name, acc, auc, eps))
            accs.append(acc)
            aucs.append(auc)
        rows.append(BenchRow(method, "mean", float(np.mean(accs)), float(np.mean(aucs)), eps))

    with tempfile.TemporaryDirectory(prefix="ipjms-flbench-") as tmp:
        for method, fplan in bench_methods(plan):
            progress(method)
            if method == "local":
                per: dict[str, dict[str, float]] = {}
                for t in tables:
                    tr = splits[t.name][0]
                    per.update(dict(_central(t.x[tr], t.y[tr], plan, [tests[tables.index(t)]])))
                add(method, per, None)
            elif method == "pooled":
                x = np.concatenate([t.x[splits[t.name][0]] for t in tables])
                y = np.concatenate([t.y[splits[t.name][0]] for t in tables])
                add(method, dict(_central(x, y, plan, tests)), None)
            else:
                assert fplan is not None
                per = _federated(tables, label, fplan, Path(tmp), na_values, group)
                add(method, per, fplan.epsilon or None)
    return rows


def format_table(rows: list[BenchRow]) -> Any:
    from rich.table import Table

    table = Table(title="ipjms fl bench: held-out accuracy / AUROC per centre")
    centres = list(dict.fromkeys(r.centre for r in rows))
    table.add_column("method")
    table.add_column("ε", justify="right")
    for c in centres:
        table.add_column(c, justify="right")
    methods = list(dict.fromkeys(r.method for r in rows))
    for m in methods:
        mine = {r.centre: r for r in rows if r.method == m}
        eps = next(iter(mine.values())).epsilon
        table.add_row(
            m,
            "-" if eps is None else f"{eps:g}",
            *(f"{mine[c].accuracy:.3f} / {mine[c].auroc:.3f}" for c in centres),
        )
    return table
