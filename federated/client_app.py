"""The node side of federated training: Flower ``ClientApp`` (Message API).

Runs inside the node's SuperNode, against the node's own data (``context.node_config``). For
every train/evaluate message it loads (once per run, cached in the run's local context state)
the node's cohort, enforces the node's own rules — a minimum cohort size and a privacy budget
across runs — trains with DP-SGD or evaluates, and replies through the egress rule
(:mod:`federated.egress`): model arrays and rounded aggregate metrics, nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.datasets import NodeData, round_count
from federated.egress import check_reply
from federated.node_data import load_node_data, setting

__all__ = ["app", "handle_train", "handle_evaluate", "handle_query"]

log = logging.getLogger("ipjms.federated.client")
app = ClientApp()

DATA_KEY = "ipjms-data"
STATE_KEY = "ipjms-state"


class Declined(Exception):
    """This node does not take part (reason is sent to the server)."""


def _org(context: Context) -> str:
    return str(setting(context.node_config, "org-id", f"node-{context.node_id}"))


def _reply(
    msg: Message, content: RecordDict, arrays: Any = None, n_features: int | None = None
) -> Message:
    """Every reply passes the egress rule here, or does not leave the node."""
    check_reply(content, arrays, n_features)
    return Message(content, reply_to=msg)


def _declined(msg: Message, context: Context, reason: str) -> Message:
    log.info("declining round: %s", reason)
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 0, "declined": 1}),
            "status": ConfigRecord({"org": _org(context), "status": "declined", "reason": reason}),
        }
    )
    return _reply(msg, content)


def _node_data(context: Context, cfg: ConfigRecord) -> tuple[NodeData, int]:
    """The run's dataset, loaded on the first message and kept in the run's local state."""
    if DATA_KEY in context.state.array_records:
        rec = context.state.array_records[DATA_KEY]
        d = NodeData(*(rec[k].numpy() for k in ("x_train", "y_train", "x_test", "y_test")))
        eligible = int(context.state.config_records[STATE_KEY]["eligible"])  # type: ignore[arg-type]
        return d, eligible
    loaded = load_node_data(
        context.node_config,
        test_fraction=float(cfg.get("test-fraction", 0.25)),  # type: ignore[arg-type]
        seed=int(cfg.get("split-seed", 0)),  # type: ignore[arg-type]
    )
    d = loaded.data
    context.state.array_records[DATA_KEY] = ArrayRecord(
        {
            "x_train": Array(np.ascontiguousarray(d.x_train, dtype=np.float32)),
            "y_train": Array(np.ascontiguousarray(d.y_train, dtype=np.float32)),
            "x_test": Array(np.ascontiguousarray(d.x_test, dtype=np.float32)),
            "y_test": Array(np.ascontiguousarray(d.y_test, dtype=np.float32)),
        }
    )
    state = _state(context)
    state["eligible"] = loaded.patients_eligible
    return d, loaded.patients_eligible


def _state(context: Context) -> ConfigRecord:
    if STATE_KEY not in context.state.config_records:
        context.state.config_records[STATE_KEY] = ConfigRecord({"history": "[]"})
    return context.state.config_records[STATE_KEY]


def _check_cohort(context: Context, cfg: ConfigRecord, data: NodeData, eligible: int) -> None:
    min_cohort = max(
        int(setting(context.node_config, "min-cohort", 0)),
        int(cfg.get("min-cohort", 0)),  # type: ignore[arg-type]
    )
    if eligible < min_cohort:
        raise Declined(
            f"cohort too small: {eligible} eligible patient(s), "
            f"this node needs at least {min_cohort}"
        )
    if len(data.y_train) == 0 or len(np.unique(data.y_train)) < 2:
        raise Declined("cohort has no positive or no negative training samples")


def _normalise(x: np.ndarray, cfg: ConfigRecord) -> np.ndarray:
    """Benchmark CSVs: federated mean/sd scaling, missing → mean. Spec features pass through."""
    if "norm-mean" not in cfg:
        return np.nan_to_num(x.astype(np.float32))
    mean = np.asarray(cfg["norm-mean"], dtype=np.float64)
    sd = np.asarray(cfg["norm-sd"], dtype=np.float64)
    z = (x.astype(np.float64) - mean) / sd
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _model(cfg: ConfigRecord, arrays: ArrayRecord):  # type: ignore[no-untyped-def]
    from federated.models import make_model, set_arrays

    model = make_model(str(cfg.get("model", "logreg")), int(cfg["n-features"]))  # type: ignore[arg-type]
    set_arrays(model, {k: v.numpy() for k, v in arrays.items()})
    return model


def _ledger(context: Context):  # type: ignore[no-untyped-def]
    from federated.budget import PrivacyBudgetLedger
    from servicekit.storage import make_engine, sqlite_url

    data_dir = Path(str(setting(context.node_config, "data-dir", "."))).expanduser()
    budget = float(setting(context.node_config, "epsilon-budget", 10.0))
    return PrivacyBudgetLedger(make_engine(sqlite_url(data_dir, "privacy_budget")), budget)


def _dp_seed(context: Context, server_round: int) -> int | None:
    """DP-SGD's sampling and noise seed comes from the node, never from the server's message: a
    server that knew it could regenerate the noise and remove it. Unset (every deployment), each
    round draws a secret one; ``dp-seed`` in the node config fixes it for a repeatable bench."""
    fixed = setting(context.node_config, "dp-seed", None)
    return None if fixed is None else int(fixed) * 1000 + server_round


def handle_train(msg: Message, context: Context) -> Message:
    from federated.budget import BudgetExceeded
    from federated.models import get_arrays
    from federated.training import DPConfig, TrainConfig, default_delta, train

    cfg = msg.content.config_records["config"]
    arrays = msg.content.array_records["arrays"]
    try:
        data, eligible = _node_data(context, cfg)
        _check_cohort(context, cfg, data, eligible)
    except Declined as exc:
        return _declined(msg, context, str(exc))
    epsilon = float(cfg.get("epsilon", 0.0))  # type: ignore[arg-type]
    rounds = int(cfg.get("rounds", 1))  # type: ignore[arg-type]
    local_epochs = int(cfg.get("local-epochs", 1))  # type: ignore[arg-type]
    state = _state(context)
    dp = None
    if epsilon > 0:
        delta = default_delta(len(data.y_train))
        ledger = _ledger(context)
        try:
            ledger.reserve(
                str(cfg.get("run-label", context.run_id)), str(cfg.get("task", "")), epsilon, delta
            )
        except BudgetExceeded as exc:
            return _declined(msg, context, str(exc))
        finally:
            ledger.engine.dispose()
        dp = DPConfig(
            target_epsilon=epsilon,
            delta=delta,
            total_epochs=rounds * local_epochs,
            max_grad_norm=float(cfg.get("max-grad-norm", 1.0)),  # type: ignore[arg-type]
            history=tuple(tuple(h) for h in json.loads(str(state["history"]))),  # type: ignore[misc]
            **json.loads(str(state.get("noise", "{}"))),
        )
    model = _model(cfg, arrays)
    server_round = int(cfg.get("server-round", 1))  # type: ignore[arg-type]
    report = train(
        model,
        _normalise(data.x_train, cfg),
        data.y_train,
        TrainConfig(
            epochs=local_epochs,
            lr=float(cfg.get("lr", 0.1)),  # type: ignore[arg-type]
            batch_size=int(cfg.get("batch-size", 64)),  # type: ignore[arg-type]
            seed=int(cfg.get("seed", 0)) * 1000 + server_round,  # type: ignore[arg-type]
            dp_seed=_dp_seed(context, server_round),
        ),
        dp,
    )
    metrics: dict[str, Any] = {
        "num-examples": round_count(len(data.y_train)),
        "train-loss": report.loss,
        "train-seconds": report.seconds,
        "declined": 0,
        "epsilon": report.epsilon or 0.0,
        "delta": report.delta or 0.0,
        "noise-multiplier": report.noise_multiplier or 0.0,
    }
    if dp is not None:
        state["history"] = json.dumps(report.history)
        # σ was calibrated for the whole run; later rounds reuse it (same data, same q)
        state["noise"] = json.dumps(
            {"noise_multiplier": report.noise_multiplier, "sample_rate": report.sample_rate}
        )
        ledger = _ledger(context)
        try:
            ledger.record_spent(
                str(cfg.get("run-label", context.run_id)), float(report.epsilon or 0.0)
            )
        finally:
            ledger.engine.dispose()
    out = get_arrays(model)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
            "metrics": MetricRecord(metrics),
            "status": ConfigRecord({"org": _org(context), "status": "ok"}),
        }
    )
    return _reply(msg, content, {k: tuple(v.shape) for k, v in arrays.items()})


def handle_evaluate(msg: Message, context: Context) -> Message:
    from federated.training import evaluate

    cfg = msg.content.config_records["config"]
    try:
        data, eligible = _node_data(context, cfg)
        _check_cohort(context, cfg, data, eligible)
    except Declined as exc:
        return _declined(msg, context, str(exc))
    model = _model(cfg, msg.content.array_records["arrays"])
    m = evaluate(model, _normalise(data.x_test, cfg), data.y_test)
    metrics: dict[str, Any] = {
        "num-examples": round_count(len(data.y_test)),
        "declined": 0,
        "auroc": m["auroc"],
        "auprc": m["auprc"],
        "brier": m["brier"],
        "accuracy": m["accuracy"],
        "log-loss": m["log_loss"],
    }
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            "status": ConfigRecord({"org": _org(context), "status": "ok"}),
        }
    )
    return _reply(msg, content)


def handle_query(msg: Message, context: Context) -> Message:
    """Normalisation statistics of the training split (benchmark CSVs): per-column sums."""
    cfg = msg.content.config_records["config"]
    try:
        data, eligible = _node_data(context, cfg)
        _check_cohort(context, cfg, data, eligible)
    except Declined as exc:
        return _declined(msg, context, str(exc))
    x = data.x_train.astype(np.float64)
    present = ~np.isnan(x)
    filled = np.where(present, x, 0.0)
    metrics: dict[str, Any] = {
        "num-examples": round_count(len(data.y_train)),
        "declined": 0,
        "feature-sum": filled.sum(axis=0).tolist(),
        "feature-sumsq": (filled**2).sum(axis=0).tolist(),
        "feature-count": present.sum(axis=0).astype(float).tolist(),
    }
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            "status": ConfigRecord({"org": _org(context), "status": "ok"}),
        }
    )
    return _reply(msg, content, n_features=int(cfg["n-features"]))  # type: ignore[arg-type]


@app.train()
def _train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)


@app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return handle_evaluate(msg, context)


@app.query()
def _query(msg: Message, context: Context) -> Message:
    return handle_query(msg, context)
