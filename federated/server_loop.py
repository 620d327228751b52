"""The authority's round loop: a Flower strategy driven over the nodes that answer.

Each round: wait (up to ``node_wait``) for at least ``min_nodes`` connected nodes, let the
strategy configure training on the nodes still in the run, collect replies until the round
timeout, set aside declines and errors, aggregate what came back, then run federated evaluation
the same way. A node that does not answer (or answers with an error) is recorded as dropped and
not asked again in this run; fewer than ``min_nodes`` usable replies fail the run with a message
that says who answered and who did not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from federated.egress import EgressViolation, check_reply
from federated.run_plan import RunPlan

__all__ = [
    "RunFailed", "RunResult", "run_federated", "make_strategy", "initial_arrays", "send_and_receive"
]  # fmt: skip


# How often the ServerApp asks the SuperLink for the replies it still waits on. Flower's own
# Grid.send_and_receive (flwr 1.32.1) looks every 3 s, so every exchange of messages — each round's
# training, the evaluation, an indicator query — ended up to 3 s after its last reply arrived; a
# look is one ServerAppIo call on the SuperLink's own host.
REPLY_POLL_SECONDS = 0.5


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Flower's ``Grid.send_and_receive`` (push the messages, pull replies until each message has
    one or ``timeout`` seconds have passed), looking every :data:`REPLY_POLL_SECONDS`."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(REPLY_POLL_SECONDS)
    return replies


class RunFailed(Exception):
    """The run could not go on (below the minimum of nodes); the message says why.
    ``budgets``: the nodes' ledger reports received before it failed (see RunResult)."""

    def __init__(self, message: str, budgets: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.budgets = budgets or {}


@dataclass
class NodeRecord:
    org: str
    node_id: int
    rounds: list[int] = field(default_factory=list)
    cohort: int = 0  # training samples, already rounded to 10 by the node
    test_size: int = 0
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0  # q over patients
    steps: int = 0  # DP-SGD steps over the run
    eval_epsilon: float = 0.0  # ε of the node's DP evaluation release(s)
    train_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    plan: RunPlan
    arrays: dict[str, np.ndarray]
    nodes: dict[int, NodeRecord] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    replies_seen: list[dict[str, Any]] = field(default_factory=list)  # structure only, for audit
    # org → the node's privacy-budget ledger as its last reply reported it (budget-* metrics):
    # epsilon_used, epsilon_budget, delta_used, delta_budget, round, phase
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def participants(self) -> list[NodeRecord]:
        return [n for n in self.nodes.values() if n.rounds]


class _ActiveGrid(Grid):
    """The grid, minus nodes that dropped out of this run (what the strategy samples from)."""

    def __init__(self, grid: Grid, excluded: set[int]) -> None:
        self._grid = grid
        self._excluded = excluded

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return send_and_receive(self._grid, messages, math.inf if timeout is None else timeout)


def make_strategy(plan: RunPlan, min_nodes: int) -> Any:
    from flwr.serverapp.strategy import FedAdam, FedAvg

    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    if plan.strategy == "fedavg":
        return FedAvg(**common)  # type: ignore[arg-type]
    return FedAdam(**common, eta=plan.server_lr, eta_l=plan.lr, beta_1=0.9, beta_2=0.99, tau=1e-3)  # type: ignore[arg-type]


def initial_arrays(plan: RunPlan) -> dict[str, np.ndarray]:
    from federated.models import get_arrays, make_model

    return dict(get_arrays(make_model(plan.model, plan.features, seed=plan.seed)))


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise RunFailed(
                f"only {len(nodes)} node(s) connected after {timeout:.0f}s; "
                f"the run needs at least {minimum}"
            )
        time.sleep(0.5)


def _org(msg: Message) -> str:
    for record in msg.content.config_records.values():
        if "org" in record:
            return str(record["org"])
    return f"node-{msg.metadata.src_node_id}"


def _structure(msg: Message, phase: str, rnd: int) -> dict[str, Any]:
    c = msg.content
    return {
        "phase": phase,
        "round": rnd,
        "node_id": msg.metadata.src_node_id,
        "arrays": {
            name: {k: list(v.shape) for k, v in rec.items()}
            for name, rec in c.array_records.items()
        },
        "metrics": {name: sorted(rec.keys()) for name, rec in c.metric_records.items()},
        "configs": {name: sorted(rec.keys()) for name, rec in c.config_records.items()},
    }


BUDGET_METRICS = {
    "budget-epsilon-used": "epsilon_used",
    "budget-epsilon": "epsilon_budget",
    "budget-delta-used": "delta_used",
    "budget-delta": "delta_budget",
}


def _ledger_report(msg: Message) -> dict[str, float] | None:
    """The node's ledger figures in a reply, if it sent all four (an older node sends none)."""
    rec = next(iter(msg.content.metric_records.values()))
    if not all(k in rec for k in BUDGET_METRICS):
        return None
    report = {name: float(rec[k]) for k, name in BUDGET_METRICS.items()}  # type: ignore[arg-type]
    return report if all(math.isfinite(v) and v >= 0 for v in report.values()) else None


def _metric(msg: Message, key: str) -> float:
    rec = next(iter(msg.content.metric_records.values()))
    value = rec.get(key, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


class _Round:
    """Split one phase's replies into usable, declined and failed; record drop-outs."""

    def __init__(
        self,
        result: RunResult,
        excluded: set[int],
        phase: str,
        rnd: int,
        arrays: ArrayRecord | None = None,
    ) -> None:
        self.result, self.excluded, self.phase, self.rnd = result, excluded, phase, rnd
        # what a reply may carry back (the egress rule, checked again here): the arrays sent
        self.shapes = None if arrays is None else {k: tuple(v.shape) for k, v in arrays.items()}
        self.n_features = result.plan.features if phase == "statistics" else None

    def _drop(self, org: str, nid: int, reason: str) -> None:
        self.result.dropped.append(
            {
                "org": org,
                "node_id": nid,
                "round": self.rnd,
                "phase": self.phase,
                "reason": reason[:300],
            }
        )
        self.excluded.add(nid)

    def sort(self, sent: list[Message], replies: Iterable[Message]) -> list[Message]:
        got: dict[int, Message] = {}
        for msg in replies:
            got[msg.metadata.src_node_id] = msg
        usable: list[Message] = []
        for out in sent:
            nid = out.metadata.dst_node_id
            reply = got.get(nid)
            known = self.result.nodes.get(nid)
            org = known.org if known else f"node-{nid}"
            if reply is None or reply.has_error():
                reason = (
                    "no answer before the round timeout" if reply is None else reply.error.reason
                )
                self._drop(org, nid, str(reason))
                continue
            self.result.replies_seen.append(_structure(reply, self.phase, self.rnd))
            try:
                check_reply(reply.content, self.shapes, self.n_features)
            except EgressViolation as exc:  # a node that broke the rule: nothing of it is used
                self._drop(org, nid, f"reply refused by the egress rule: {exc}")
                continue
            org = _org(reply)
            self.result.nodes.setdefault(nid, NodeRecord(org=org, node_id=nid)).org = org
            ledger = _ledger_report(reply)
            if ledger is not None:  # the latest report wins (evaluation comes after training)
                self.result.budgets[org] = {**ledger, "round": self.rnd, "phase": self.phase}
            status = next(iter(reply.content.config_records.values()), ConfigRecord())
            if status.get("status") == "declined":
                self.result.declined.append(
                    {
                        "org": org,
                        "round": self.rnd,
                        "phase": self.phase,
                        "reason": str(status.get("reason", "")),
                    }
                )
                self.excluded.add(nid)
                continue
            usable.append(reply)
        return usable


def run_federated(
    grid: Grid,
    plan: RunPlan,
    *,
    report: Callable[[str], None] = print,
    extra_config: dict[str, Any] | None = None,
) -> RunResult:
    started = time.perf_counter()
    excluded: set[int] = set()
    active = _ActiveGrid(grid, excluded)
    strategy = make_strategy(plan, plan.min_nodes)
    arrays = ArrayRecord({k: Array(v) for k, v in initial_arrays(plan).items()})
    result = RunResult(plan=plan, arrays={k: v.numpy() for k, v in arrays.items()})
    base_config = {**plan.client_config(), **(extra_config or {})}

    def need(n_usable: int, phase: str, rnd: int) -> None:
        if n_usable < plan.min_nodes:
            dropped = sorted({d["org"] for d in result.dropped})
            declined = sorted({f"{d['org']} ({d['reason']})" for d in result.declined})
            raise RunFailed(
                f"round {rnd} {phase}: only {n_usable} node(s) answered, the run needs at least "
                f"{plan.min_nodes}; dropped: {', '.join(dropped) or 'none'}; "
                f"declined: {', '.join(declined) or 'none'}",
                budgets=result.budgets,
            )

    if plan.normalise:
        _wait_for_nodes(active, plan.min_nodes, plan.node_wait)
        sent = [
            Message(content=_content(arrays, base_config, 0), message_type="query", dst_node_id=n)
            for n in active.get_node_ids()
        ]
        replies = send_and_receive(grid, sent, plan.round_timeout)
        usable = _Round(result, excluded, "statistics", 0).sort(sent, replies)
        need(len(usable), "statistics", 0)
        mean, sd = _pooled_moments(usable)
        base_config["norm-mean"] = mean
        base_config["norm-sd"] = sd

    for rnd in range(1, plan.rounds + 1):
        _wait_for_nodes(active, plan.min_nodes, plan.node_wait)
        train_cfg = ConfigRecord(dict(base_config))
        round_started = time.perf_counter()
        sent = list(strategy.configure_train(rnd, arrays, train_cfg, active))
        replies = send_and_receive(grid, sent, plan.round_timeout)
        usable = _Round(result, excluded, "train", rnd, arrays).sort(sent, replies)
        need(len(usable), "train", rnd)
        for reply in usable:
            node = result.nodes[reply.metadata.src_node_id]
            node.rounds.append(rnd)
            node.cohort = int(_metric(reply, "num-examples"))
            node.epsilon = _metric(reply, "epsilon")
            node.delta = _metric(reply, "delta")
            node.noise_multiplier = _metric(reply, "noise-multiplier")
            node.sample_rate = _metric(reply, "sample-rate")
            node.steps += int(_metric(reply, "steps"))
            node.train_seconds += _metric(reply, "train-seconds")
        new_arrays, _train_metrics = strategy.aggregate_train(rnd, usable)
        if new_arrays is None:
            raise RunFailed(f"round {rnd}: aggregation produced no model")
        arrays = new_arrays
        train_wall = time.perf_counter() - round_started
        local_seconds = sum(_metric(r, "train-seconds") for r in usable)
        aggregated: dict[str, float] = {}
        per_node: dict[str, dict[str, float]] = {}
        n_evaluated = 0
        if rnd == plan.rounds:
            # Nodes answer a capped number of evaluations per run, each under DP and charged to
            # their ledgers (federated/dp_evaluation.py): the final model is the one evaluated.
            eval_cfg = ConfigRecord(dict(base_config))
            sent = list(strategy.configure_evaluate(rnd, arrays, eval_cfg, active))
            replies = send_and_receive(grid, sent, plan.round_timeout)
            usable = _Round(result, excluded, "evaluate", rnd).sort(sent, replies)
            need(len(usable), "evaluate", rnd)
            for reply in usable:
                node = result.nodes[reply.metadata.src_node_id]
                node.test_size = int(_metric(reply, "num-examples"))
                node.metrics = {
                    k: _metric(reply, k) for k in ("auroc", "auprc", "brier", "accuracy", "events")
                }
                node.eval_epsilon += _metric(reply, "epsilon")
                per_node[node.org] = dict(node.metrics)
            aggregated = _weighted(usable)
            # outcome events behind the AUROC, over all nodes (0 from a node that did not say)
            aggregated["events"] = sum(_metric(r, "events") for r in usable)
            n_evaluated = len(usable)
        entry = {
            "round": rnd,
            "nodes": sorted(
                result.nodes[n].org for n in result.nodes if rnd in result.nodes[n].rounds
            ),
            "evaluation": aggregated,
            "per_node": per_node,
            "train_wall_seconds": train_wall,
            "local_train_seconds": local_seconds,
            "epsilon": {
                result.nodes[n].org: result.nodes[n].epsilon
                for n in result.nodes
                if rnd in result.nodes[n].rounds
            },
        }
        result.history.append(entry)
        spent: dict[str, float] = entry["epsilon"]  # type: ignore[assignment]
        eps = ", ".join(f"{org} ε={v:.2f}" for org, v in sorted(spent.items()))
        a = aggregated
        trained_on = len(entry["nodes"])  # type: ignore[arg-type]
        line = f"round {rnd}/{plan.rounds}: trained on {trained_on} node(s) | {eps}"
        if a:
            line += (
                f" | evaluation (DP, patient-weighted) AUROC {a['auroc']:.3f} "
                f"AUPRC {a['auprc']:.3f} Brier {a['brier']:.4f} over {n_evaluated} node(s), "
                f"{a['events']:.0f} outcome events"
            )
        report(line)
    result.arrays = {k: v.numpy() for k, v in arrays.items()}
    result.final_metrics = result.history[-1]["evaluation"] if result.history else {}
    result.seconds = time.perf_counter() - started
    return result


def _content(arrays: ArrayRecord, config: dict[str, Any], rnd: int) -> Any:
    from flwr.app import RecordDict

    return RecordDict({"arrays": arrays, "config": ConfigRecord({**config, "server-round": rnd})})


def _weighted(replies: list[Message]) -> dict[str, float]:
    """Test-size-weighted mean of each evaluation metric (AUROC etc.) over nodes."""
    out: dict[str, float] = {}
    for key in ("auroc", "auprc", "brier", "accuracy", "log-loss"):
        pairs = [(_metric(r, "num-examples"), _metric(r, key)) for r in replies]
        pairs = [(w, v) for w, v in pairs if w > 0 and not math.isnan(v)]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if total else math.nan
    return out


def _pooled_moments(replies: list[Message]) -> tuple[list[float], list[float]]:
    s = sq = c = None
    for r in replies:
        rec = next(iter(r.content.metric_records.values()))
        a = np.asarray(rec["feature-sum"], dtype=np.float64)
        b = np.asarray(rec["feature-sumsq"], dtype=np.float64)
        n = np.asarray(rec["feature-count"], dtype=np.float64)
        s, sq, c = (a, b, n) if s is None else (s + a, sq + b, c + n)  # type: ignore[operator]
    assert s is not None and sq is not None and c is not None
    c = np.maximum(c, 1.0)
    mean = s / c
    var = np.maximum(sq / c - mean**2, 0.0)
    sd = np.where(var > 1e-12, np.sqrt(var), 1.0)
    return mean.tolist(), sd.tolist()
