"""The node in charge of its privacy (issue 21), in process: the ledger (node run ids,
max(reserved, spent), δ, charges), patient-level DP-SGD (independent RDP recount, a patient of
many discharges clipped as one, empty Poisson draws), the DP evaluation release, and the node's
policy against a server's messages (ClientApp handlers called directly with crafted messages).
The same attacks over real SuperNodes: test_malicious_server.py."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from federated.budget import BudgetExceeded, PrivacyBudgetLedger
from federated.client_app import handle_evaluate, handle_query, handle_train, ledger_for
from federated.dp_evaluation import histogram_metrics, noisy_histogram, score_histogram
from federated.models import get_arrays, make_model
from federated.node_policy import NodePolicy, PolicyError
from federated.run_plan import RunPlan
from federated.training import DPConfig, TrainConfig, public_units, sampling_plan, train
from servicekit.storage import make_engine

# --- the ledger -----------------------------------------------------------------------------


def _ledger(tmp_path: Path, eps: float = 10.0, delta: float = 1e-4) -> PrivacyBudgetLedger:
    return PrivacyBudgetLedger(make_engine(f"sqlite:///{tmp_path / 'l.db'}"), eps, delta)


def test_ledger_charges_max_of_reserved_and_spent_and_budgets_delta(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("run-a", "t", 3.0, 1e-5, label="same")
    ledger.record_training("run-a", 3.5, 1e-5, [(1.0, 0.1, 100)])  # spent beyond the reservation
    assert ledger.used() == pytest.approx(3.5)
    ledger.charge("run-a", 0.2, kind="evaluation")  # on top of the spend: 3.7
    assert ledger.used() == pytest.approx(3.7)
    ledger.reserve("run-b", "t", 2.0, 1e-5, label="same")  # same label, another run
    ledger.charge("run-b", 0.3, kind="evaluation")  # within run-b's reservation: no extra
    assert ledger.used() == pytest.approx(5.7)
    assert {e.label for e in ledger.entries()} == {"same"} and len(ledger.entries()) == 2
    assert ledger.used_delta() == pytest.approx(2e-5)
    assert ledger.entry("run-a").history == ((1.0, 0.1, 100),)  # type: ignore[union-attr]


def test_ledger_refuses_beyond_epsilon_or_delta_budget_and_writes_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, eps=5.0, delta=2e-5)
    ledger.reserve("r1", "t", 4.0, 1e-5)
    with pytest.raises(BudgetExceeded, match=r"used 4.00 of 5.00 \(this run asks for ε=2.00\)"):
        ledger.reserve("r2", "t", 2.0, 1e-5)
    with pytest.raises(BudgetExceeded, match="privacy budget spent: used 4.00"):
        ledger.charge("analytics-1", 1.5, kind="analytics")  # a free-standing charge
    assert ledger.used() == 4.0 and ledger.charges() == []
    ledger.charge("analytics-1", 0.5, kind="analytics")
    assert ledger.used() == 4.5
    ledger.reserve("r3", "t", 0.3, 1e-5)  # δ now 2e-5: the budget's end
    with pytest.raises(BudgetExceeded, match="used δ 2.0e-05 of 2.0e-05"):
        ledger.reserve("r4", "t", 0.1, 1e-6)
    with pytest.raises(ValueError):
        ledger.reserve("r5", "t", 0.0, 1e-5)  # ε = 0 is not a reservation


def test_ledger_carries_an_old_label_keyed_table_over(tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE fl_privacy_budget (run_id TEXT PRIMARY KEY, task TEXT, "
                "reserved_epsilon REAL, spent_epsilon REAL, delta REAL, created_at REAL, "
                "updated_at REAL)"
            )
        )
        conn.execute(
            text("INSERT INTO fl_privacy_budget VALUES ('same', 't', 2, 5.12, 1e-4, 0, 0)")
        )
    ledger = PrivacyBudgetLedger(engine, 10.0, 1e-3)
    assert ledger.used() == pytest.approx(5.12)  # max(reserved, spent), not reserved only


# --- patient-level DP-SGD -------------------------------------------------------------------


def _patients(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 6, n_patients)
    groups = np.repeat(np.arange(n_patients), per)
    x = rng.normal(size=(len(groups), 4)).astype(np.float32)
    y = (rng.random(len(groups)) < 1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
    return x, y, groups


def test_patient_level_epsilon_matches_an_independent_opacus_rdp_recount() -> None:
    from opacus.accountants import RDPAccountant

    x, y, groups = _patients(300, 0)
    model = make_model("logreg", 4)
    history: tuple = ()
    sigma: dict[str, float] = {}
    rounds, epochs, batch = 3, 2, 40
    for rnd in range(rounds):
        dp = DPConfig(2.0, 1e-5, rounds * epochs, 1.0, history, **sigma)
        report = train(model, x, y, TrainConfig(epochs, 0.3, batch, seed=rnd), dp, groups)
        history = tuple(report.history)
        sigma = {"noise_multiplier": report.noise_multiplier, "sample_rate": report.sample_rate}  # type: ignore[dict-item]
    assert report.units == 300
    # the rate over patients, from the patient count (rounded to 10), not from discharges
    assert report.sample_rate == pytest.approx(batch / 300)
    assert len(y) > 600  # ~3 discharges per patient: a discharge-level q would be far smaller
    acc = RDPAccountant()
    for _ in range(rounds * report.steps):  # one accountant step per DP-SGD step
        acc.step(noise_multiplier=report.noise_multiplier, sample_rate=batch / 300)
    recount = acc.get_epsilon(1e-5)
    assert report.epsilon == pytest.approx(recount, rel=1e-9)
    assert 1.9 < report.epsilon <= 2.0


def _one_step_update(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    model = make_model("logreg", 4)
    q, _ = sampling_plan(len(np.unique(groups)) if groups is not None else len(y), 10_000, 1)
    assert q == 1.0  # every patient in the one step: the difference is the patient's alone
    dp = DPConfig(1.0, 1e-5, 1, 1.0, noise_multiplier=1e-9, sample_rate=q)
    train(model, x, y, TrainConfig(1, 1.0, 10_000, dp_seed=5), dp, groups)
    return np.concatenate([v.ravel() for v in get_arrays(model).values()])


def test_a_patient_with_many_discharges_is_clipped_as_one() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = (rng.random(100) < 0.3).astype(np.float32)
    base = _one_step_update(x, y, np.arange(100))
    # one more patient, 40 discharges pushing the same way
    heavy_x = np.vstack([x, np.tile(np.array([[5.0, 5.0, 5.0, 5.0]], np.float32), (40, 1))])
    heavy_y = np.concatenate([y, np.ones(40, np.float32)])
    as_patient = _one_step_update(heavy_x, heavy_y, np.concatenate([np.arange(100), [100] * 40]))
    as_rows = _one_step_update(heavy_x, heavy_y, None)
    lr, clip, expected = 1.0, 1.0, public_units(101)  # q = 1: the expected count is the count
    assert np.linalg.norm(as_patient - base) <= lr * clip / expected + 1e-6
    # counted per discharge, the same patient moves the model ~40 times as far
    assert np.linalg.norm(as_rows - base) > 20 * lr * clip / expected


def test_empty_poisson_draws_are_steps_not_crashes() -> None:
    x, y, groups = _patients(10, 3)
    q, steps = sampling_plan(10, 1, 3)
    assert q == pytest.approx(0.1) and steps == 30
    gen = torch.Generator().manual_seed(11)
    empty = sum(not bool((torch.rand(10, generator=gen) < q).any()) for _ in range(steps))
    assert empty >= 3  # this seed draws empty batches (the generator train() uses)
    dp = DPConfig(1.0, 1e-5, 3, 1.0)
    report = train(make_model("logreg", 4), x, y, TrainConfig(3, 0.1, 1, dp_seed=11), dp, groups)
    assert report.steps == 30 and report.history[0][2] == 30  # all counted, none skipped
    assert report.epsilon is not None and 0 < report.epsilon <= 1.0


# --- the DP evaluation release ----------------------------------------------------------------


def test_evaluation_histogram_moves_by_at_most_one_per_patient() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(60)
    y = (rng.random(60) < p).astype(int)
    units = np.concatenate([np.arange(40), np.full(20, 40)])  # patient 40: 20 discharges
    full = score_histogram(p, y, units)
    without = score_histogram(p[:40], y[:40], units[:40])
    assert np.abs(full - without).sum() == pytest.approx(1.0)
    assert full.sum() == pytest.approx(41)  # each patient weighs 1
    exact = histogram_metrics(full)
    noisy = histogram_metrics(noisy_histogram(full, 1.0, np.random.default_rng(1)))
    assert noisy["auroc"] != exact["auroc"] and 0 <= noisy["auroc"] <= 1
    with pytest.raises(ValueError):
        noisy_histogram(full, 0.0, np.random.default_rng(1))


# --- the node's policy against a server's messages -------------------------------------------


def test_policy_comes_from_the_node_config_and_refuses_what_it_does_not_allow() -> None:
    policy = NodePolicy.from_node_config({"source": "fhir", "max-epsilon-run": "2"})
    assert policy.refusal("readmission-30d", 0.0) == (
        "this node requires differential privacy (ε > 0)"
    )
    assert policy.refusal("readmission-30d", float("nan")) is not None
    assert policy.refusal("readmission-30d", 2.5) == ("ε per run above this node's maximum of 2.00")
    assert policy.refusal("csv", 1.0) == "task not allowed by this node's privacy policy"
    assert policy.refusal("readmission-30d", 2.0) is None
    terms = policy.terms(2.0)
    assert terms.train_epsilon + terms.eval_epsilon == pytest.approx(2.0)
    assert terms.delta == 1e-5
    with pytest.raises(PolicyError, match="only for a CSV benchmark"):
        NodePolicy.from_node_config({"source": "fhir", "evaluation": "exact"})


def _csv_node(tmp_path: Path, **extra: object) -> dict[str, object]:
    x, y, groups = _patients(120, 5)
    path = tmp_path / "site.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "d", "patient", "y"])
        w.writerows([[*r, int(g), int(v)] for r, g, v in zip(x, groups, y, strict=True)])
    return {
        "source": "csv",
        "csv-path": str(path),
        "label": "y",
        "group-column": "patient",
        "org-id": "site",
        "data-dir": str(tmp_path / "node"),
        "epsilon-budget": 10.0,
        **extra,
    }


PLAN = RunPlan(task="csv", rounds=2, epsilon=2.0, n_features=4, lr=0.3, batch_size=20)


def _msg(kind: str, rnd: int = 1, **over: object) -> Message:
    cfg = {**PLAN.client_config(), "server-round": rnd, **over}
    arrays = ArrayRecord({k: Array(v) for k, v in get_arrays(make_model("logreg", 4)).items()})
    return Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord(cfg)}), dst_node_id=1,
        message_type=kind,
    )  # fmt: skip


def _status(reply: Message) -> tuple[str, str]:
    st = reply.content.config_records["status"]
    return str(st["status"]), str(st.get("reason", ""))


def test_a_server_cannot_stretch_change_or_unprivatise_a_run(tmp_path: Path) -> None:
    node = _csv_node(tmp_path)
    ctx = Context(1, 1, node, RecordDict(), {})
    assert _status(handle_query(_msg("query"), ctx)) == ("declined", "queries are off at this node")
    assert _status(handle_train(_msg("train", epsilon=0.0), ctx))[1].startswith(
        "this node requires differential privacy"
    )
    # the first acceptable message fixes the run: 2 rounds at ε = 2, test-fraction the node's
    first = handle_train(_msg("train", 1, **{"test-fraction": 0.99, "min-cohort": 10**6}), ctx)
    assert _status(first) == ("ok", "")
    metrics = first.content.metric_records["metrics"]
    assert "train-loss" not in metrics and metrics["num-examples"] % 10 == 0
    assert metrics["num-examples"] > 0.6 * 120  # trained on the node's 75 %, not on 1 %
    assert _status(handle_train(_msg("train", 2, rounds=8), ctx)) == (
        "declined", "run parameters changed after the run's first message",
    )  # fmt: skip
    assert _status(handle_train(_msg("train", 2, lr=0.0), ctx))[1].startswith("run parameters")
    assert _status(handle_train(_msg("train", 2), ctx))[0] == "ok"
    assert _status(handle_train(_msg("train", 3), ctx)) == (
        "declined", "more rounds than the run announced",
    )  # fmt: skip
    ev = handle_evaluate(_msg("evaluate", 2), ctx)
    assert _status(ev)[0] == "ok" and ev.content.metric_records["metrics"]["epsilon"] > 0
    assert _status(handle_evaluate(_msg("evaluate", 2), ctx)) == (
        "declined", "evaluation limit of this run reached",
    )  # fmt: skip
    ledger = ledger_for(node)
    (entry,) = ledger.entries()
    assert entry.run_id != PLAN.run_label and len(entry.run_id) == 32  # the node's own id
    (charge,) = ledger.charges()
    assert charge.kind == "evaluation" and charge.run_id == entry.run_id
    # trained ε + evaluation ε = the run's 2.0, and the cost is the reservation
    assert entry.spent_epsilon + charge.epsilon <= 2.0 + 1e-9
    assert ledger.used() == pytest.approx(2.0) and ledger.used_delta() == pytest.approx(1e-5)


def test_understated_rounds_are_refused_by_the_projection(tmp_path: Path) -> None:
    """A server announcing 1 round and sending more: the second round is declined (the run's
    parameters are fixed, and the projection of ε would exceed the reservation)."""
    ctx = Context(1, 1, _csv_node(tmp_path), RecordDict(), {})
    assert _status(handle_train(_msg("train", 1, rounds=1), ctx))[0] == "ok"
    ctx.state.config_records["ipjms-state"]["rounds-trained"] = 0  # even if the count were lost
    assert _status(handle_train(_msg("train", 2, rounds=1), ctx)) == (
        "declined", "this round would exceed the run's privacy reservation",
    )  # fmt: skip
    history = json.loads(str(ctx.state.config_records["ipjms-state"]["history"]))
    assert len(history) == 1 and not math.isnan(history[0][0])


def test_a_reused_label_is_a_new_run_charged_again(tmp_path: Path) -> None:
    node = _csv_node(tmp_path, **{"epsilon-budget": 5.0})
    for run in (1, 2):
        ctx = Context(run, 1, node, RecordDict(), {})
        assert _status(handle_train(_msg("train", 1, **{"run-label": "same"}), ctx))[0] == "ok"
    ctx = Context(3, 1, node, RecordDict(), {})
    reply = handle_train(_msg("train", 1, **{"run-label": "same"}), ctx)
    assert _status(reply) == (
        "declined", "privacy budget spent: used 4.00 of 5.00 (this run asks for ε=2.00)",
    )  # fmt: skip
    assert len(ledger_for(node).entries()) == 2


def test_the_card_states_unit_sigma_q_steps_epsilon_delta_per_patient(tmp_path: Path) -> None:
    from federated.client_app import app as client_app
    from federated.local_grid import LocalGrid
    from federated.model_card import build_card
    from federated.server_loop import run_federated

    nodes = {}
    for i in (1, 2):
        (tmp_path / f"n{i}").mkdir()
        nodes[i] = {**_csv_node(tmp_path / f"n{i}"), "org-id": f"site-{i}", "delta-run": 1e-7}
    plan = RunPlan(**{**PLAN.__dict__, "run_label": "card"})
    result = run_federated(LocalGrid(client_app, nodes), plan, report=lambda _l: None)
    card = build_card(result)
    # the outcome events behind the AUROC (a care node's risk-model gate reads them): each
    # node's rounded to 10, their sum on the card
    events = [p["evaluation"]["events"] for p in card["participants"]]
    assert all(e > 0 and e % 10 == 0 for e in events), events
    assert card["evaluation"]["events"] == sum(events)
    privacy = card["privacy"]
    assert privacy["unit"] == "patient" and "does not cover" in privacy["not_covered"]
    for d, p in zip(privacy["per_node"], card["participants"], strict=True):
        assert d["noise_multiplier"] > 0 and d["sample_rate"] == pytest.approx(20 / 90, rel=0.2)
        per_epoch = d["steps"] / (2 * 2)  # rounds × local epochs × ≈ 1/q
        assert per_epoch == int(per_epoch) and abs(per_epoch - 1 / d["sample_rate"]) <= 0.51
        assert d["delta"] == p["delta"] == 1e-7  # not rounded away to 0.0
        assert p["epsilon"] == pytest.approx(2.0, abs=0.02)  # training + the DP evaluation
        assert d["epsilon_evaluation"] == pytest.approx(0.2)
