"""A malicious authority's ServerApp (test only): shipped in a FAB to a real SuperLink by
test_malicious_server.py, it sends the nodes' real ClientApps the messages an authority that
wants more than the DP guarantee allows would send, and writes every reply down (status,
reason, metrics, whether the arrays came back unchanged) to ``results-dir``/``label``.json.

Run config ``script``: ``attacks`` (one Flower run, the attacks in order) or ``again`` (a
second run under the same label, one honest-looking round)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from federated.models import get_arrays, make_model
from federated.run_plan import RunPlan
from federated.server_loop import send_and_receive

app = ServerApp()

PLAN = RunPlan(rounds=2, epsilon=2.0, lr=0.5, local_epochs=1, batch_size=8, run_label="same")


def _arrays(bias: float = 0.0) -> ArrayRecord:
    arrays = get_arrays(make_model("logreg", PLAN.features))
    arrays["linear.bias"] = np.full_like(arrays["linear.bias"], bias)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _send(grid: Grid, kind: str, arrays: ArrayRecord, **over: Any) -> dict[str, Any]:
    cfg = {**PLAN.client_config(), "server-round": 1, **over}
    sent = {k: v.numpy() for k, v in arrays.items()}
    msgs = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)}),
            dst_node_id=n,
            message_type=kind,
        )
        for n in grid.get_node_ids()
    ]
    out: dict[str, Any] = {}
    for reply in send_and_receive(grid, msgs, 300):  # the real ServerApp's polling
        nid = str(reply.metadata.src_node_id)
        if reply.has_error():
            out[nid] = {"error": str(reply.error.reason)}
            continue
        status = next(iter(reply.content.config_records.values()))
        metrics = next(iter(reply.content.metric_records.values()))
        back = reply.content.array_records.get("arrays")
        out[str(status.get("org", nid))] = {
            "status": str(status.get("status")),
            "reason": str(status.get("reason", "")),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            "arrays_unchanged": None
            if back is None
            else all(np.array_equal(back[k].numpy(), sent[k]) for k in sent),
        }
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < int(cfg["nodes"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    steps: dict[str, Any] = {}
    if cfg["script"] == "attacks":
        zero = _arrays()
        steps["query"] = _send(grid, "query", zero)  # exact per-feature sums
        steps["epsilon-0"] = _send(grid, "train", zero, epsilon=0.0)  # DP off
        steps["epsilon-50"] = _send(grid, "train", zero, epsilon=50.0)
        # the run as announced: 1 round (understated), lr = 0 (loss probing), the server's
        # test-fraction 0.99 (evaluation set) and min-cohort 10⁶ (a forced decline)
        first = {"rounds": 1, "lr": 0.0, "test-fraction": 0.99, "min-cohort": 10**6}
        steps["round-1"] = _send(grid, "train", zero, **first)
        steps["round-2"] = _send(grid, "train", zero, **{**first, "server-round": 2})
        steps["round-2-rounds-8"] = _send(
            grid, "train", zero, **{**first, "rounds": 8, "server-round": 2}
        )
        # a bias-only model: every patient in one score bin — the exact test size, if exact
        biased = _arrays(bias=8.0)
        steps["evaluate-bias-only"] = _send(grid, "evaluate", biased, **first)
        steps["evaluate-again"] = _send(grid, "evaluate", biased, **first)
    else:
        steps["again-round-1"] = _send(grid, "train", _arrays(), rounds=1)
    out = Path(str(cfg["results-dir"])) / f"{cfg['label']}.json"
    out.write_text(json.dumps(steps, indent=1))
