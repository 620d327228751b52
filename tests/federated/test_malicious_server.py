"""Issue 21, must-show 1: a malicious server against real SuperNodes. A SuperLink and three
SuperNodes as real processes (TLS, SuperNode authentication, real nodes and consent registry);
the authority's ServerApp replaced by one that attacks (tests/federated/malicious_server.py):
understated rounds, a reused run label, ε = 0, ε above the node's maximum, exact queries, a
forced decline, a huge test-fraction, lr = 0 loss probing and an exact-count evaluation. Each
is refused or answered only with accounted noise, and each node's ledger total matches an
independent recomputation from its accountant history."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fl_net import NODES, FlNet

from deploy.launcher import wait_until
from federated.budget import PrivacyBudgetLedger
from federated.deployment import APP_PACKAGE, build_app_dir, submit_run
from servicekit.storage import make_engine

# the shared network's start (seeded nodes, consents, SuperLink, SuperNodes), when this module's
# first test is the first to ask for it: on a loaded machine it can outlast the default 600 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

HERE = Path(__file__).resolve().parent


def _attack(net: FlNet, script: str, label: str) -> dict[str, Any]:
    assert net.superlink_dir is not None
    results = net.root / "attacks"
    results.mkdir(exist_ok=True)
    config = {"results-dir": str(results), "label": label, "script": script, "nodes": len(NODES)}
    app_dir = build_app_dir(net.root / f"fab-{label}", config)
    shutil.copy(HERE / "malicious_server.py", app_dir / APP_PACKAGE / "attacks.py")
    apps = app_dir / APP_PACKAGE / "apps.py"
    apps.write_text(
        apps.read_text().replace(
            "from federated.server_app import app as server_app",
            f"from {APP_PACKAGE}.attacks import app as server_app",
        )
    )
    submit_run(net.superlink_dir / "flwr", app_dir, config)
    out = results / f"{label}.json"
    wait_until(out.exists, 900, 1.0, f"the malicious run {label}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def attacked(
    shared_fl_net: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Path], dict[str, Any]]]:
    """The attacks, on the shared network (tests/conftest.py) but against SuperNodes of this
    module's own: fresh data folders, so every node's ledger holds exactly what the attacks
    charged, whatever ran on the network before. Yields each node's ledger and the replies."""
    network: FlNet = shared_fl_net.get()
    network.use_supernodes_under(tmp_path_factory.mktemp("flattack-supernodes"))
    network.ensure_supernodes(NODES)
    steps = _attack(network, "attacks", "attacks")
    steps.update(_attack(network, "again", "again"))
    yield {org: network.supernode_dir(org) / "privacy_budget.db" for org in NODES}, steps


def _all(steps: dict[str, Any], step: str) -> list[dict[str, Any]]:
    replies = list(steps[step].values())
    assert sorted(steps[step]) == sorted(NODES), steps[step]
    return replies


def test_no_dp_no_exact_queries_and_no_epsilon_above_the_nodes_maximum(attacked: Any) -> None:
    _, steps = attacked
    for step, reason in (
        ("query", "queries are off at this node"),
        ("epsilon-0", "this node requires differential privacy (ε > 0)"),
        ("epsilon-50", "ε per run above this node's maximum of 3.00"),
    ):
        for r in _all(steps, step):
            assert (r["status"], r["reason"]) == ("declined", reason), step
            assert set(r["metrics"]) == {"num-examples", "declined"}


def test_forced_decline_huge_test_fraction_and_lr0_probing_get_nothing_exact(
    attacked: Any,
) -> None:
    _, steps = attacked
    for org, r in steps["round-1"].items():
        # the server's min-cohort 10⁶ is not the node's: no forced decline (and no threshold
        # query on the cohort size)
        assert r["status"] == "ok", r
        assert "train-loss" not in r["metrics"]  # the loss is not on the egress list
        assert r["arrays_unchanged"] is True  # lr = 0: the update carries no data at all
        assert 0 < r["metrics"]["epsilon"] <= 2.0 and r["metrics"]["delta"] == 1e-5
        assert r["metrics"]["noise-multiplier"] > 0 and 0 < r["metrics"]["sample-rate"] <= 1
        # trained on the node's own split (75 % of patients), not the server's 1 %
        again = steps["again-round-1"][org]
        assert r["metrics"]["num-examples"] == again["metrics"]["num-examples"] > 0


def test_understated_rounds_and_changed_parameters_are_refused(attacked: Any) -> None:
    _, steps = attacked
    for r in _all(steps, "round-2"):
        assert (r["status"], r["reason"]) == ("declined", "more rounds than the run announced")
    for r in _all(steps, "round-2-rounds-8"):
        assert r["reason"] == "run parameters changed after the run's first message"


def test_evaluation_is_noisy_accounted_and_capped(attacked: Any) -> None:
    _, steps = attacked
    for r in _all(steps, "evaluate-bias-only"):
        assert r["status"] == "ok" and r["arrays_unchanged"] is None
        m = r["metrics"]
        assert m["epsilon"] > 0  # a DP release, charged to the ledger (checked below)
        assert m["num-examples"] % 10 == 0
    for r in _all(steps, "evaluate-again"):
        assert r["reason"] == "evaluation limit of this run reached"


def _recount(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta)) if history else 0.0


def test_reused_label_is_charged_twice_and_ledgers_match_a_recount(attacked: Any) -> None:
    ledgers, steps = attacked
    for org in NODES:
        engine = make_engine(f"sqlite:///{ledgers[org]}")
        ledger = PrivacyBudgetLedger(engine, 100.0, 1e-4)
        entries = ledger.entries()
        # both Flower runs were labelled "same": two node-generated run ids, two charges
        assert [e.label for e in entries] == ["same", "same"]
        assert len({e.run_id for e in entries}) == 2
        total = 0.0
        for entry, step in zip(entries, ("round-1", "again-round-1"), strict=True):
            spent = _recount([tuple(h) for h in entry.history], entry.delta)  # type: ignore[misc]
            assert spent == pytest.approx(entry.spent_epsilon, rel=1e-9)
            assert spent == pytest.approx(steps[step][org]["metrics"]["epsilon"], rel=1e-9)
            charged = sum(c.epsilon for c in ledger.charges(entry.run_id))
            assert entry.reserved_epsilon == 2.0 and entry.delta == 1e-5
            total += max(entry.reserved_epsilon, spent + charged)
        (evaluation,) = ledger.charges()
        assert evaluation.kind == "evaluation"
        assert evaluation.epsilon == pytest.approx(
            steps["evaluate-bias-only"][org]["metrics"]["epsilon"]
        )
        assert ledger.used() == pytest.approx(total) == pytest.approx(4.0)
        assert ledger.used_delta() == pytest.approx(2e-5)
        engine.dispose()
