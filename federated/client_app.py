"""The node side of federated training: Flower ``ClientApp`` (Message API).

Runs inside the node's SuperNode, against the node's own data (``context.node_config``), under
the node's own privacy policy (:mod:`federated.node_policy`) — the server's message is a
request, never the rule. For every message it

1. checks the task and ε against the policy (ε = 0 or above the node's maximum → decline);
2. fixes the run's parameters at the run's first message (:data:`node_policy.FIXED_KEYS`) and
   declines any later message that changes them;
3. loads the cohort once per run (the held-out split is the node's: its ``test-fraction`` and
   ``split-seed``), declines below the node's own minimum cohort (count rounded to 10);
4. train: reserves the run's (ε, δ) in the ledger under a run id the *node* generates,
   projects ε from the accountant history plus this round's steps and declines if it would
   exceed the reservation, trains with patient-level DP-SGD, records ε and the history;
   evaluate: answers at most ``max-evaluations`` times per run, with metrics from a
   Laplace-noised histogram charged to the ledger (or declines; ``exact`` only for a CSV bench);
   query: only if the node enables it (a CSV bench's normalisation sums);

and replies through the egress rule (:mod:`federated.egress`).
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.datasets import NodeData, round_count
from federated.egress import check_reply
from federated.node_data import load_node_data, setting
from federated.node_policy import NodePolicy, RunTerms, changed_keys, fixed_params

__all__ = [
    "app",
    "handle_train",
    "handle_evaluate",
    "handle_query",
    "ledger_for",
    "ledger_metrics",
]

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


def _declined(
    msg: Message, context: Context, reason: str, budget: dict[str, float] | None = None
) -> Message:
    log.info("declining round: %s", reason)
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 0, "declined": 1, **(budget or {})}),
            "status": ConfigRecord({"org": _org(context), "status": "declined", "reason": reason}),
        }
    )
    return _reply(msg, content)


_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "g_train", "g_test")


def _node_data(context: Context, policy: NodePolicy) -> tuple[NodeData, int]:
    """The run's dataset, loaded on the first message and kept in the run's local state. The
    split is the node's (policy), whatever the server's message says."""
    if DATA_KEY in context.state.array_records:
        rec = context.state.array_records[DATA_KEY]
        d = NodeData(*(rec[k].numpy() for k in _ARRAYS))
        eligible = int(_state(context)["eligible"])  # type: ignore[arg-type]
        return d, eligible
    loaded = load_node_data(
        context.node_config, test_fraction=policy.test_fraction, seed=policy.split_seed
    )
    d = loaded.data
    if d.g_train is None:  # every row its own unit
        d.g_train = np.arange(len(d.y_train))
        d.g_test = np.arange(len(d.y_train), len(d.y_train) + len(d.y_test))
    arrays: dict[str, np.ndarray] = {
        "x_train": np.ascontiguousarray(d.x_train, dtype=np.float32),
        "y_train": np.ascontiguousarray(d.y_train, dtype=np.float32),
        "x_test": np.ascontiguousarray(d.x_test, dtype=np.float32),
        "y_test": np.ascontiguousarray(d.y_test, dtype=np.float32),
        "g_train": np.ascontiguousarray(d.g_train, dtype=np.int64),
        "g_test": np.ascontiguousarray(d.g_test, dtype=np.int64),
    }
    context.state.array_records[DATA_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    _state(context)["eligible"] = loaded.patients_eligible
    return NodeData(*(arrays[k] for k in _ARRAYS)), loaded.patients_eligible


def _state(context: Context) -> ConfigRecord:
    if STATE_KEY not in context.state.config_records:
        context.state.config_records[STATE_KEY] = ConfigRecord({"history": "[]"})
    return context.state.config_records[STATE_KEY]


def _policy(context: Context) -> NodePolicy:
    return NodePolicy.from_node_config(context.node_config)


def _run_id(context: Context) -> str:
    """This run's id in the ledger: generated by the node on the run's first message (the
    server's label is only a note — reusing it cannot reuse a reservation)."""
    state = _state(context)
    if "run-id" not in state:
        state["run-id"] = uuid.uuid4().hex
    return str(state["run-id"])


def _admit(context: Context, cfg: ConfigRecord, policy: NodePolicy) -> RunTerms:
    """The checks every message of a run passes first; raises Declined."""
    epsilon = cfg.get("epsilon", 0.0)
    epsilon = float(epsilon) if isinstance(epsilon, int | float) else float("nan")  # type: ignore[arg-type]
    reason = policy.refusal(str(cfg.get("task", "")), epsilon)
    if reason:
        raise Declined(reason)
    state = _state(context)
    if "fixed" not in state:
        state["fixed"] = json.dumps(fixed_params(cfg))
        _run_id(context)
    elif changed_keys(json.loads(str(state["fixed"])), cfg):
        raise Declined("run parameters changed after the run's first message")
    return policy.terms(epsilon)


def _check_cohort(policy: NodePolicy, data: NodeData, eligible: int) -> None:
    if eligible < policy.min_cohort:
        raise Declined(
            f"cohort too small: about {round_count(eligible)} eligible patients, "
            f"this node needs at least {policy.min_cohort}"
        )
    if len(data.y_train) == 0 or len(np.unique(data.y_train)) < 2:
        raise Declined("cohort has no positive or no negative training samples")


def _prepare(msg: Message, context: Context) -> tuple[NodePolicy, RunTerms, NodeData]:
    cfg = msg.content.config_records["config"]
    policy = _policy(context)
    terms = _admit(context, cfg, policy)
    data, eligible = _node_data(context, policy)
    _check_cohort(policy, data, eligible)
    return policy, terms, data


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


def ledger_for(node_config: Any):  # type: ignore[no-untyped-def]
    """The node's privacy-budget ledger (SQLite in its data dir), with the policy's budgets."""
    from federated.budget import PrivacyBudgetLedger
    from servicekit.storage import make_engine, sqlite_url

    policy = NodePolicy.from_node_config(node_config)
    data_dir = Path(str(setting(node_config, "data-dir", "."))).expanduser()
    return PrivacyBudgetLedger(
        make_engine(sqlite_url(data_dir, "privacy_budget")),
        policy.epsilon_budget,
        policy.delta_budget,
    )


def ledger_metrics(ledger: Any) -> dict[str, float]:
    """The ledger's state as reply metrics (egress keys ``budget-*``): ε and δ used over all
    the node's runs and releases, and its budgets. Sent with every training and evaluation
    reply and with a budget decline, so the authority sees each node's remaining budget."""
    used = ledger.usage()
    return {
        "budget-epsilon-used": float(used.epsilon),
        "budget-epsilon": float(ledger.budget),
        "budget-delta-used": float(used.delta),
        "budget-delta": float(ledger.delta_budget),
    }


def _dp_seed(context: Context, server_round: int) -> int | None:
    """DP-SGD's sampling and noise seed comes from the node, never from the server's message: a
    server that knew it could regenerate the noise and remove it. Unset (every deployment), each
    round draws a secret one; ``dp-seed`` in the node config fixes it for a repeatable bench."""
    fixed = setting(context.node_config, "dp-seed", None)
    return None if fixed is None else int(fixed) * 1000 + server_round


def _int(cfg: ConfigRecord, key: str, default: int) -> int:
    return int(cfg.get(key, default))  # type: ignore[arg-type]


def handle_train(msg: Message, context: Context) -> Message:
    from federated.budget import BudgetExceeded
    from federated.models import get_arrays
    from federated.training import (
        DPConfig,
        TrainConfig,
        calibrate_noise,
        rdp_epsilon,
        sampling_plan,
        train,
        unit_index,
    )

    cfg = msg.content.config_records["config"]
    arrays = msg.content.array_records["arrays"]
    try:
        policy, terms, data = _prepare(msg, context)
    except Declined as exc:
        return _declined(msg, context, str(exc))
    rounds = _int(cfg, "rounds", 1)
    local_epochs = max(1, _int(cfg, "local-epochs", 1))
    batch_size = max(1, _int(cfg, "batch-size", 64))
    server_round = _int(cfg, "server-round", 1)
    state = _state(context)
    trained = int(state.get("rounds-trained", 0))  # type: ignore[arg-type]
    if trained >= rounds or rounds < 1:
        return _declined(msg, context, "more rounds than the run announced")
    dp = None
    run_id = _run_id(context)
    if terms.epsilon > 0:
        history = [tuple(h) for h in json.loads(str(state["history"]))]
        noise = json.loads(str(state.get("noise", "{}")))
        _, n_units = unit_index(data.g_train, len(data.y_train))
        q, steps = sampling_plan(n_units, batch_size, local_epochs)
        sigma = noise.get("noise_multiplier")
        if sigma is None or noise.get("sample_rate") != q:
            total = steps * rounds
            sigma = calibrate_noise(_target(terms), q, total)
        projected = rdp_epsilon([*history, (sigma, q, steps)], terms.delta)  # type: ignore[list-item]
        if projected > terms.train_epsilon + 1e-6:
            return _declined(msg, context, "this round would exceed the run's privacy reservation")
        ledger = ledger_for(context.node_config)
        try:
            ledger.reserve(
                run_id,
                str(cfg.get("task", "")),
                terms.epsilon,
                terms.delta,
                label=str(cfg.get("run-label", "")),
            )
        except BudgetExceeded as exc:
            return _declined(msg, context, str(exc), ledger_metrics(ledger))
        finally:
            ledger.engine.dispose()
        dp = DPConfig(
            target_epsilon=terms.train_epsilon,
            delta=terms.delta,
            total_epochs=rounds * local_epochs,
            max_grad_norm=float(cfg.get("max-grad-norm", 1.0)),  # type: ignore[arg-type]
            history=tuple(history),  # type: ignore[arg-type]
            noise_multiplier=float(sigma),
            sample_rate=q,
        )
    model = _model(cfg, arrays)
    report = train(
        model,
        _normalise(data.x_train, cfg),
        data.y_train,
        TrainConfig(
            epochs=local_epochs,
            lr=float(cfg.get("lr", 0.1)),  # type: ignore[arg-type]
            batch_size=batch_size,
            seed=_int(cfg, "seed", 0) * 1000 + server_round,
            dp_seed=_dp_seed(context, server_round),
        ),
        dp,
        groups=data.g_train,
    )
    state["rounds-trained"] = trained + 1
    metrics: dict[str, Any] = {
        "num-examples": round_count(len(data.y_train)),
        "train-seconds": report.seconds,
        "declined": 0,
        "epsilon": report.epsilon or 0.0,
        "delta": report.delta or 0.0,
        "noise-multiplier": report.noise_multiplier or 0.0,
        "sample-rate": report.sample_rate or 0.0,
        "steps": report.steps,
    }
    if dp is not None:
        state["history"] = json.dumps(report.history)
        # σ was calibrated for the whole run; later rounds reuse it (same data, same q)
        state["noise"] = json.dumps(
            {"noise_multiplier": report.noise_multiplier, "sample_rate": report.sample_rate}
        )
        ledger = ledger_for(context.node_config)
        try:
            ledger.record_training(
                run_id, float(report.epsilon or 0.0), terms.delta, report.history
            )
            metrics.update(ledger_metrics(ledger))
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


def _target(terms: RunTerms):  # type: ignore[no-untyped-def]
    from federated.training import DPConfig

    return DPConfig(target_epsilon=terms.train_epsilon, delta=terms.delta, total_epochs=1)


def handle_evaluate(msg: Message, context: Context) -> Message:
    from federated.budget import BudgetExceeded
    from federated.dp_evaluation import histogram_metrics, noisy_histogram, score_histogram
    from federated.models import predict_proba
    from federated.training import evaluate

    cfg = msg.content.config_records["config"]
    try:
        policy, terms, data = _prepare(msg, context)
    except Declined as exc:
        return _declined(msg, context, str(exc))
    if policy.evaluation == "off" or (policy.evaluation == "dp" and terms.eval_epsilon <= 0):
        return _declined(msg, context, "evaluation is off at this node")
    state = _state(context)
    done = int(state.get("evaluations", 0))  # type: ignore[arg-type]
    if done >= policy.max_evaluations:
        return _declined(msg, context, "evaluation limit of this run reached")
    model = _model(cfg, msg.content.array_records["arrays"])
    x = _normalise(data.x_test, cfg)
    budget: dict[str, float] = {}
    if policy.evaluation == "exact":  # a CSV benchmark node's own choice on its own data
        m = evaluate(model, x, data.y_test)
        total = float(len(data.y_test))
        positives = float(np.sum(np.asarray(data.y_test) > 0))
    else:
        ledger = ledger_for(context.node_config)
        try:
            ledger.charge(_run_id(context), terms.eval_epsilon, 0.0, kind="evaluation")
            budget = ledger_metrics(ledger)
        except BudgetExceeded as exc:
            return _declined(msg, context, str(exc), ledger_metrics(ledger))
        finally:
            ledger.engine.dispose()
        hist = score_histogram(predict_proba(model, x), data.y_test, data.g_test)  # type: ignore[arg-type]
        rng = np.random.default_rng(secrets.randbits(128))
        m = histogram_metrics(noisy_histogram(hist, terms.eval_epsilon, rng))
        total, positives = m["total"], m["positives"]
    state["evaluations"] = done + 1
    metrics: dict[str, Any] = {
        "num-examples": round_count(int(round(total))),
        # outcome events the evaluation saw (patient-weighted under DP), rounded to 10: how
        # much the AUROC can be trusted (a care node's risk-model gate needs enough of them)
        "events": round_count(int(round(positives))),
        "declined": 0,
        "auroc": m["auroc"],
        "auprc": m["auprc"],
        "brier": m["brier"],
        "accuracy": m["accuracy"],
        "log-loss": m["log_loss"],
        "epsilon": terms.eval_epsilon if policy.evaluation == "dp" else 0.0,
        **budget,
    }
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            "status": ConfigRecord({"org": _org(context), "status": "ok"}),
        }
    )
    return _reply(msg, content)


def handle_query(msg: Message, context: Context) -> Message:
    """Normalisation statistics of the training split (benchmark CSVs): per-column sums — only
    if the node enables ``allow-query`` (exact sums: never for a node with patients' records)."""
    cfg = msg.content.config_records["config"]
    if not _policy(context).allow_query:
        return _declined(msg, context, "queries are off at this node")
    try:
        _policy_obj, _terms, data = _prepare(msg, context)
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


@app.query("indicators")
def _indicators(msg: Message, context: Context) -> Message:
    from federated.indicators.node_answer import answer

    return answer(msg, context)
