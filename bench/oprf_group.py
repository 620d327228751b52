"""The OPRF's cost per ristretto255 group (trust/group_backend.py): libsodium vs pure Python.

Run: ``.venv/bin/python bench/oprf_group.py [--repeat 200]``

Per group, in the same run: the authority's step for one pseudonym (``blind_evaluate``: one
element check + one scalar multiplication), a node's whole round trip for one input (``blind`` +
``finalize``: hash-to-group, two multiplications, one inversion) and the server-side
``evaluate``. Median of ``--repeat`` calls after a warm-up, in microseconds, and the ratio
pure/libsodium (the baseline measured in the same run; these machines are noisy). Prints a table
and writes ``bench/results/oprf_group.json``. libsodium is skipped where it is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from trust import group_backend, oprf

ROOT = Path(__file__).resolve().parents[1]
INPUT = b"national-id|110101199003077777"


def _median_us(call: Callable[[], object], repeat: int) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(group: group_backend.RistrettoGroup, repeat: int) -> dict[str, float]:
    original = group_backend.selected
    group_backend.selected = lambda: group  # type: ignore[assignment]  # this run's group
    try:
        sk = oprf.random_key()
        r, blinded = oprf.blind(INPUT)
        evaluated = oprf.blind_evaluate(sk, blinded)

        def node_work() -> bytes:  # the node's two steps (the authority's is measured apart)
            oprf.blind(INPUT)
            return oprf.finalize(INPUT, r, evaluated)

        return {
            "blind_evaluate_us": _median_us(lambda: oprf.blind_evaluate(sk, blinded), repeat),
            "blind_plus_finalize_us": _median_us(node_work, repeat),
            "evaluate_us": _median_us(lambda: oprf.evaluate(sk, INPUT), repeat),
        }
    finally:
        group_backend.selected = original  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "oprf_group.json")
    args = ap.parse_args()
    groups: list[group_backend.RistrettoGroup] = [group_backend.PurePythonGroup()]
    if group_backend.libsodium_available():
        groups.insert(0, group_backend.LibsodiumGroup())
    results = {g.name: measure(g, args.repeat) for g in groups}
    header = f"{'group':<12} {'blind_evaluate':>15} {'blind+finalize':>15} {'evaluate':>10}"
    print(f"{header}  (µs, median)")
    for name, row in results.items():
        print(
            f"{name:<12} {row['blind_evaluate_us']:>15.0f} {row['blind_plus_finalize_us']:>15.0f} "
            f"{row['evaluate_us']:>10.0f}"
        )
    ratios = {}
    if "libsodium" in results:
        ratios = {
            key: results["pure-python"][key] / results["libsodium"][key]
            for key in results["libsodium"]
        }
        print("pure/libsodium: " + ", ".join(f"{k} {v:.0f}x" for k, v in ratios.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "results_us": results,
                "ratio_pure_over_libsodium": ratios,
                "repeat": args.repeat,
                "python": platform.python_version(),
                "load_average_1min": os.getloadavg()[0],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
