"""The federated egress rule (``federated/egress.py``): what a node's reply may carry.

Raw records never leave a node: a reply carrying per-patient values, a metric that is not on the
allow-list, or free text is refused by the node before it is sent, and — should a node send one
anyway (a changed or compromised ClientApp) — refused again by the server, which then uses
nothing of that node's reply. Honest replies of a real run pass both checks.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.client_app import app as client_app
from federated.client_app import handle_evaluate, handle_query, handle_train
from federated.egress import EgressViolation, check_reply
from federated.local_grid import LocalGrid
from federated.run_plan import RunPlan
from federated.server_loop import run_federated

N_FEATURES = 4
# no DP-SGD (ε = 0): the same replies, much quicker (DP runs are tested in test_training_rules)
PLAN = RunPlan(
    task="csv", rounds=1, epsilon=1.0, n_features=N_FEATURES, normalise=True, min_nodes=2, lr=0.3
)


def _csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, 0.5, 0.0]))))).astype(int)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "d", "y"])
        w.writerows([[*row, label] for row, label in zip(x, y, strict=True)])
    return path


def _node(tmp_path: Path, org: str, n: int, seed: int) -> dict[str, object]:
    return {
        "source": "csv",
        "csv-path": str(_csv(tmp_path / f"{org}.csv", n, seed)),
        "label": "y",
        "org-id": org,
        "data-dir": str(tmp_path / f"ledger-{org}"),
        "epsilon-budget": 10.0,
        "allow-query": True,  # the CSV normalisation sums (a bench node's own choice)
    }


# --- Violations, each applied to an honest reply of the same phase --------------------------------
# (phase the violation applies to, how it changes the reply's RecordDict)
Mutation = Callable[[RecordDict], None]


def _per_patient_metric(content: RecordDict) -> None:
    # one value per training patient (200 of them), disguised as a scalar metric's value
    content.metric_records["metrics"]["epsilon"] = [0.1 * i for i in range(200)]


def _per_patient_vector(content: RecordDict) -> None:
    # a "per-column" statistic that holds one entry per patient
    content.metric_records["metrics"]["feature-sum"] = [float(i) for i in range(200)]


def _patient_rows_as_array(content: RecordDict) -> None:
    content.array_records["arrays"]["x_train"] = Array(np.zeros((200, N_FEATURES), np.float32))


def _reshaped_parameter(content: RecordDict) -> None:
    # the model's parameter name, but a per-patient shape
    name = next(iter(content.array_records["arrays"].keys()))
    content.array_records["arrays"][name] = Array(np.zeros((200, N_FEATURES), np.float32))


def _unknown_metric(content: RecordDict) -> None:
    content.metric_records["metrics"]["max-age"] = 97.0


def _unrounded_count(content: RecordDict) -> None:
    content.metric_records["metrics"]["num-examples"] = 37


def _unrounded_events(content: RecordDict) -> None:
    content.metric_records["metrics"]["events"] = 7  # an exact small count of readmissions


def _free_text_reason(content: RecordDict) -> None:
    status = content.config_records["status"]
    status["status"] = "declined"
    status["reason"] = "patient Jane Doe, MRN 0042, born 1961-04-02: readmitted twice"


def _free_text_org(content: RecordDict) -> None:
    content.config_records["status"]["org"] = "Jane Doe MRN 0042 born 1961-04-02"


def _free_text_status(content: RecordDict) -> None:
    content.config_records["status"]["status"] = "ok: Jane Doe (MRN 0042)"


VIOLATIONS: dict[str, tuple[str, Mutation]] = {
    "per-patient values in a scalar metric": ("train", _per_patient_metric),
    "per-patient values in a per-column statistic": ("query", _per_patient_vector),
    "patient rows as an extra array": ("train", _patient_rows_as_array),
    "a parameter reshaped to patient rows": ("train", _reshaped_parameter),
    "an unknown metric": ("evaluate", _unknown_metric),
    "an unrounded count": ("evaluate", _unrounded_count),
    "an unrounded event count": ("evaluate", _unrounded_events),
    "free text as a decline reason": ("train", _free_text_reason),
    "free text as the org": ("evaluate", _free_text_org),
    "free text as the status": ("evaluate", _free_text_status),
}


class _Honest:
    """Real replies of one node for each phase, with what the server sent for them."""

    def __init__(self, tmp_path: Path) -> None:
        grid = LocalGrid(
            client_app, {1: _node(tmp_path, "a", 200, 1), 2: _node(tmp_path, "b", 200, 2)}
        )
        result = run_federated(grid, PLAN, report=lambda _l: None)
        assert len(result.participants()) == 2
        self.sent = {m.metadata.message_id: m for m in grid.sent}
        self.replies: dict[str, tuple[Message, Message]] = {}
        for reply in grid.received:
            request = self.sent[reply.metadata.reply_to_message_id]
            self.replies.setdefault(request.metadata.message_type, (request, reply))
        assert set(self.replies) == {"query", "train", "evaluate"}

    def expected(self, phase: str) -> tuple[dict[str, tuple[int, ...]] | None, int | None]:
        request, _ = self.replies[phase]
        if phase != "train":
            return None, N_FEATURES if phase == "query" else None
        sent = request.content.array_records["arrays"]
        return {k: tuple(v.shape) for k, v in sent.items()}, None


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> _Honest:
    return _Honest(tmp_path_factory.mktemp("honest"))


def test_honest_replies_of_every_phase_pass_the_rule(honest: _Honest) -> None:
    for phase, (_, reply) in honest.replies.items():
        check_reply(reply.content, *honest.expected(phase))


def test_a_decline_with_its_fixed_reason_passes_the_rule(tmp_path: Path) -> None:
    context = Context(
        1, 1, dict(_node(tmp_path, "tiny", 40, 1), **{"min-cohort": 100}), RecordDict(), {}
    )
    cfg = ConfigRecord(PLAN.client_config())
    msg = Message(RecordDict({"config": cfg}), dst_node_id=1, message_type="evaluate")
    reply = handle_evaluate(msg, context)
    status = reply.content.config_records["status"]
    assert status["status"] == "declined" and "cohort too small: about 40 eligible" in str(
        status["reason"]
    )
    check_reply(reply.content)


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_the_rule_refuses(honest: _Honest, name: str) -> None:
    phase, mutate = VIOLATIONS[name]
    _, reply = honest.replies[phase]
    content = _copy(reply.content)
    mutate(content)
    with pytest.raises(EgressViolation):
        check_reply(content, *honest.expected(phase))


def _copy(content: RecordDict) -> RecordDict:
    out = RecordDict()
    for key, rec in content.array_records.items():
        out[key] = ArrayRecord({k: Array(v.numpy().copy()) for k, v in rec.items()})
    for key, rec in content.metric_records.items():
        out[key] = MetricRecord(
            {k: (list(v) if isinstance(v, list) else v) for k, v in rec.items()}
        )
    for key, rec in content.config_records.items():
        out[key] = ConfigRecord(dict(rec.items()))
    return out


# --- At the node: the ClientApp's reply path ---

_HANDLERS = {"train": handle_train, "evaluate": handle_evaluate, "query": handle_query}


def _changed_node_app(name: str) -> ClientApp:
    """A node whose handler adds a violation to its reply before the node's send path (the
    reply is built by the real handler; only the content is changed on its way out)."""
    import federated.client_app as node_side

    phase, mutate = VIOLATIONS[name]
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        original = node_side.check_reply

        def mutate_then_check(content: RecordDict, *args: object) -> None:
            mutate(content)
            original(content, *args)  # type: ignore[arg-type]

        node_side.check_reply = mutate_then_check  # type: ignore[assignment]
        try:
            return _HANDLERS[msg.metadata.message_type](msg, context)
        finally:
            node_side.check_reply = original

    for register in (app.train(), app.evaluate(), app.query()):
        register(handle)
    return app


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_the_node_refuses_to_send(honest: _Honest, tmp_path: Path, name: str) -> None:
    phase, _ = VIOLATIONS[name]
    request, _ = honest.replies[phase]
    context = Context(1, 1, _node(tmp_path, "a", 200, 1), RecordDict(), {})
    with pytest.raises(EgressViolation):
        _changed_node_app(name)(request, context)


def test_the_node_refuses_statistics_that_do_not_fit_the_model(tmp_path: Path) -> None:
    """A server asking for 3 features from a node with 4 columns gets no reply: the 4 per-column
    sums do not fit the model the server described."""
    context = Context(1, 1, _node(tmp_path, "a", 200, 1), RecordDict(), {})
    cfg = ConfigRecord({**PLAN.client_config(), "n-features": 3})
    msg = Message(RecordDict({"config": cfg}), dst_node_id=1, message_type="query")
    with pytest.raises(EgressViolation, match="one number per model feature"):
        client_app(msg, context)


# --- Again at the server: a node that sends a violating reply anyway ---


def _rogue_app(name: str) -> ClientApp:
    """Node "rogue" answers like an honest node, then changes its reply after the node's check
    (a changed or compromised ClientApp); the other nodes are honest."""
    phase, mutate = VIOLATIONS[name]
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if context.node_config["org-id"] != "rogue" or msg.metadata.message_type != phase:
            return reply
        content = _copy(reply.content)
        mutate(content)
        if phase == "train":  # were it used, these weights would wreck the model
            for key, arr in list(content.array_records["arrays"].items()):
                if key in reply.content.array_records["arrays"]:
                    content.array_records["arrays"][key] = Array(arr.numpy() + 1000.0)
        return Message(content, reply_to=msg)

    for register in (app.train(), app.evaluate(), app.query()):
        register(handle)
    return app


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_the_server_refuses_a_violating_reply_and_uses_nothing_of_it(
    tmp_path: Path, name: str
) -> None:
    nodes = {1: ("a", 1), 2: ("b", 2), 3: ("rogue", 3)}
    grid = LocalGrid(
        _rogue_app(name),
        {nid: _node(tmp_path, org, 200, seed) for nid, (org, seed) in nodes.items()},
    )
    result = run_federated(grid, PLAN, report=lambda _l: None)
    (dropped,) = result.dropped
    assert dropped["node_id"] == 3 and dropped["phase"] == _PHASE_NAME[VIOLATIONS[name][0]]
    assert dropped["reason"].startswith("reply refused by the egress rule")
    # nothing of the refused reply is used: not its weights, statistics or evaluation
    assert set(result.history[-1]["per_node"]) == {"a", "b"}
    assert all(np.all(np.abs(v) < 100) for v in result.arrays.values())
    if VIOLATIONS[name][0] != "evaluate":  # refused before it trained: never a participant
        assert sorted(n.org for n in result.participants()) == ["a", "b"]


_PHASE_NAME = {"query": "statistics", "train": "train", "evaluate": "evaluate"}
