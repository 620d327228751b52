"""Federated-learning benchmarks (issue 5, must-show 6). Prints a table, writes
bench/results/federated.json.

1. Opacus DP-SGD time per epoch next to non-private training of the same model on the same data
   (the tertiary site's synthetic cohort; ratio, target ≤ 2×).
2. A Flower round's wall time (ServerApp loop + ClientApps over the in-process grid: message
   building, serialisation checks, aggregation, per-round data/Opacus set-up) next to the summed
   local training time of that round (the framework's overhead ratio).
3. The ``ipjms fl bench`` table on the synthetic cohorts of three sites.

    .venv/bin/python bench/federated.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# This script is bench/federated.py: keep bench/ off sys.path so `federated` is the package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def _load_export():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_synthetic_cohorts", ROOT / "bench" / "export_synthetic_cohorts.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_export = _load_export()
LABEL, export = _export.LABEL, _export.export

from federated.bench import DEFAULT_PLAN, format_table, run_bench  # noqa: E402
from federated.datasets import read_centre_csv  # noqa: E402
from federated.models import make_model  # noqa: E402
from federated.training import DPConfig, TrainConfig, default_delta, train  # noqa: E402


def dp_overhead(csv_path: Path, epochs: int = 3, repeats: int = 3) -> dict[str, float]:
    table = read_centre_csv(csv_path, LABEL)
    x = np.nan_to_num(table.x).astype(np.float32)
    y = table.y
    plain, private = [], []
    for r in range(repeats):
        m = make_model("logreg", x.shape[1])
        plain.append(train(m, x, y, TrainConfig(epochs=epochs, lr=0.3, seed=r)).seconds / epochs)
        m = make_model("logreg", x.shape[1])
        dp = DPConfig(3.0, default_delta(len(y)), epochs, 1.0)
        private.append(
            train(m, x, y, TrainConfig(epochs=epochs, lr=0.3, seed=r), dp).seconds / epochs
        )
    p, d = statistics.median(plain), statistics.median(private)
    return {
        "samples": len(y),
        "non_private_s_per_epoch": p,
        "dp_sgd_s_per_epoch": d,
        "ratio": d / p,
    }


def flower_overhead(folder: Path, rounds: int = 5) -> dict[str, object]:
    from federated.client_app import app as client_app
    from federated.local_grid import LocalGrid
    from federated.server_loop import run_federated

    files = sorted(folder.glob("*.csv"))
    with tempfile.TemporaryDirectory() as tmp:
        configs = {
            i + 1: {"source": "csv", "csv-path": str(f), "label": LABEL, "org-id": f.stem,
                    "data-dir": f"{tmp}/{f.stem}", "epsilon-budget": 1e6}
            for i, f in enumerate(files)
        }  # fmt: skip
        n_features = len(read_centre_csv(files[0], LABEL).columns)
        plan = replace(
            DEFAULT_PLAN,
            rounds=rounds,
            epsilon=3.0,
            n_features=n_features,
            run_label=uuid.uuid4().hex,
        )
        result = run_federated(LocalGrid(client_app, configs), plan, report=lambda _l: None)
    per_round = [
        {
            "round": h["round"],
            "wall_s": h["train_wall_seconds"],
            "local_train_s": h["local_train_seconds"],
            "overhead_ratio": h["train_wall_seconds"] / max(h["local_train_seconds"], 1e-9),
        }
        for h in result.history
    ]
    steady = per_round[1:] or per_round
    return {
        "rounds": per_round,
        "median_overhead_ratio_after_round_1": statistics.median(
            r["overhead_ratio"] for r in steady
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller cohorts (smoke run)")
    args = parser.parse_args()
    import logging

    import flwr.common.logger  # noqa: F401

    logging.getLogger("flwr").setLevel(logging.WARNING)
    out: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="ipjms-flbench-data-") as tmp:
        data = Path(tmp)
        counts = export(data, scale=0.3 if args.quick else 1.0)
        out["cohorts"] = {k: {"discharges": n, "readmitted": pos} for k, (n, pos) in counts.items()}
        print("cohorts:", out["cohorts"])
        dp = dp_overhead(data / "tertiary.csv")
        out["dp_sgd_vs_non_private"] = dp
        print(
            f"DP-SGD {dp['dp_sgd_s_per_epoch'] * 1000:.1f} ms/epoch vs non-private "
            f"{dp['non_private_s_per_epoch'] * 1000:.1f} ms/epoch on {dp['samples']} samples: "
            f"ratio {dp['ratio']:.2f}× (target ≤ 2×)"
        )
        fo = flower_overhead(data)
        out["flower_round_overhead"] = fo
        for r in fo["rounds"]:  # type: ignore[attr-defined]
            print(
                f"round {r['round']}: wall {r['wall_s']:.2f}s vs local training "
                f"{r['local_train_s']:.2f}s → overhead ×{r['overhead_ratio']:.2f}"
            )
        plan = replace(DEFAULT_PLAN, test_fraction=0.4)
        rows = run_bench(data, LABEL, plan=plan, progress=lambda m: print(f"… {m}", flush=True))
        out["fl_bench"] = {"test_fraction": plan.test_fraction, "rows": [r.as_json() for r in rows]}
        from rich.console import Console

        Console(width=140).print(format_table(rows))
    target = ROOT / "bench" / "results" / "federated.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
