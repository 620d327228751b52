"""Must-show 2: the released count's noise matches the stated distribution (a statistical test
over many seeded draws), the node's ledger charges the stated ε and refuses once spent, strata
below the minimum are never released; and the replies pass the egress rule.

The goodness-of-fit tests are chi-square tests at significance 0.001: a correct sampler fails
one with probability 0.001 for a random seed; the seeds are fixed, so the outcome is
repeatable. Each is paired with a check that the same test rejects a 20 % wrong scale (so it
can fail)."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from indicator_cohort import AS_OF, PERIOD, cohort, consented
from scipy import stats

from federated.client_app import app as client_app
from federated.egress import EgressViolation, check_indicator_reply
from federated.indicators import IndicatorQuery, default_indicators, release, tally
from federated.indicators.authority_run import run_query
from federated.indicators.mechanism import discrete_laplace_pmf, sample_discrete_laplace
from federated.indicators.publish import result_document
from federated.indicators.query import histograms, metric_key
from federated.local_grid import LocalGrid

DEFS = default_indicators()
ALPHA = 0.001


def _chi2_pvalue(draws: list[int], scale: float, span: int) -> float:
    """Chi-square goodness of fit against the discrete Laplace pmf, bins −span..span plus the
    two tails."""
    n = len(draws)
    observed = [sum(1 for d in draws if d < -span)]
    observed += [sum(1 for d in draws if d == z) for z in range(-span, span + 1)]
    observed.append(sum(1 for d in draws if d > span))
    inside = [discrete_laplace_pmf(z, scale) for z in range(-span, span + 1)]
    tail = (1 - sum(inside)) / 2
    expected = [n * p for p in (tail, *inside, tail)]
    return float(stats.chisquare(observed, expected).pvalue)


def test_sampler_matches_discrete_laplace() -> None:
    rng = random.Random(20261207)
    draws = [sample_discrete_laplace(Fraction(7, 2), rng) for _ in range(20000)]
    assert _chi2_pvalue(draws, 3.5, 12) > ALPHA
    assert _chi2_pvalue(draws, 3.5 * 1.2, 12) < ALPHA  # the test has power against a wrong scale
    assert abs(sum(draws) / len(draws)) < 0.1


def _query(**kw) -> IndicatorQuery:
    base = dict(
        indicators=("htn-control",),
        period=PERIOD,
        as_of=AS_OF,
        epsilon=1.0,
        min_count=1,
        run_label="t",
    )
    base.update(kw)
    return IndicatorQuery(**base)


def test_released_count_follows_the_stated_noise() -> None:
    query = _query(epsilon=0.5)  # 2 histograms → ε 0.25 each, Δ = 1 → scale 4
    (num_hist, den_hist) = histograms(query, DEFS)
    assert num_hist.scale == Fraction(4) and den_hist.scale == Fraction(4)
    exact = tally(consented(), DEFS, query.indicators, PERIOD, AS_OF)
    true = exact.get("htn-control").numerator
    rng = random.Random(7)
    key = metric_key("htn-control", "all", "all", "num")
    draws = []
    while len(draws) < 6000:
        counts = release(exact, query, DEFS, rng, min_count=0)
        if key in counts:  # released when the noisy denominator reaches the minimum (1)
            draws.append(counts[key] - true)
    # released only when noisy den ≥ 1, independent of the numerator's noise: unbiased sample
    assert _chi2_pvalue(draws, 4.0, 14) > ALPHA
    assert _chi2_pvalue(draws, 4.8, 14) < ALPHA


def test_strata_below_the_minimum_are_never_released() -> None:
    query = _query(strata=("age_band", "sex"), epsilon=0.2, min_count=2)
    exact = tally(consented(), DEFS, query.indicators, PERIOD, AS_OF)
    small = {
        metric_key("htn-control", dim, value, side)
        for (ind, dim, value), c in exact.cells.items()
        if c.denominator < 2
        for side in ("num", "den")
    }
    assert metric_key("htn-control", "age_band", "0-17", "den") in small
    rng = random.Random(11)
    released_large = 0
    for _ in range(500):  # noise at scale 20: a small cell's noisy count is often ≥ 2
        counts = release(exact, query, DEFS, rng)
        assert not small & counts.keys()
        for (_ind, dim, value), _c in exact.cells.items():
            den = counts.get(metric_key("htn-control", dim, value, "den"))
            assert den is None or den >= 2  # nor a cell whose noisy count is below it
        released_large += metric_key("htn-control", "all", "all", "den") in counts
    assert released_large > 0


def _grid(tmp_path: Path, budget: float, **extra) -> LocalGrid:
    data = tmp_path / "patients.json"
    data.write_text(json.dumps(cohort()))
    cfg = {
        "org-id": "clinic-b",
        "source": "json",
        "indicator-data": str(data),
        "data-dir": str(tmp_path / "node"),
        "epsilon-budget": budget,
        "indicators-min-count": 1,
        **extra,
    }
    (tmp_path / "node").mkdir(exist_ok=True)
    return LocalGrid(client_app, {1: cfg})


def _ledger_entries(tmp_path: Path) -> list[tuple[str, float, float]]:
    from federated.client_app import ledger_for

    ledger = ledger_for({"data-dir": str(tmp_path / "node"), "epsilon-budget": 2.5})
    try:
        return [(c.kind, c.epsilon, c.delta) for c in ledger.charges()]
    finally:
        ledger.engine.dispose()


def _charge_ids(tmp_path: Path) -> list[tuple[str]]:
    import sqlite3

    with sqlite3.connect(tmp_path / "node" / "privacy_budget.db") as db:
        return db.execute("select run_id from fl_privacy_charges").fetchall()


def test_ledger_charges_the_stated_epsilon_and_refuses_once_spent(tmp_path: Path) -> None:
    grid = _grid(tmp_path, budget=2.5)
    query = _query(indicators=DEFS.ids(), epsilon=1.0)
    first = run_query(grid, query, DEFS)
    second = run_query(grid, query, DEFS)
    assert [a.status for a in first + second] == ["ok", "ok"]
    assert first[0].epsilon == 1.0 and first[0].counts
    assert _ledger_entries(tmp_path) == [("quality-indicators", 1.0, 0.0)] * 2
    third = run_query(grid, query, DEFS, min_nodes=0)
    assert third[0].status == "declined"
    assert third[0].reason == "privacy budget spent: used 2.00 of 2.50 (this run asks for ε=1.00)"
    assert third[0].counts == {}
    assert len(_ledger_entries(tmp_path)) == 2  # the refused query charged nothing
    assert all(c[0].startswith("ind-") for c in _charge_ids(tmp_path))  # ids the node made
    doc = result_document(query, DEFS, third)
    assert all(c["status"] == "not-answered" for i in doc["indicators"] for c in i["cells"])


def test_node_refuses_more_than_its_per_query_epsilon(tmp_path: Path) -> None:
    grid = _grid(tmp_path, budget=100.0, **{"indicators-max-epsilon": 2.0})
    answers = run_query(grid, _query(epsilon=3.0), DEFS, min_nodes=0)
    assert answers[0].status == "declined"
    assert answers[0].reason == "indicator query asks for ε=3.00, this node allows at most 2.00"
    assert not _ledger_entries(tmp_path)


def test_answer_over_the_grid_is_close_to_exact_at_high_epsilon(tmp_path: Path) -> None:
    grid = _grid(tmp_path, budget=100.0, **{"indicators-max-epsilon": 10.0})
    query = _query(indicators=("readmission-30d-all",), epsilon=10.0)  # scale 0.4 (Δ = 2)
    (answer,) = run_query(grid, query, DEFS)
    num = answer.counts[metric_key("readmission-30d-all", "all", "all", "num")]
    den = answer.counts[metric_key("readmission-30d-all", "all", "all", "den")]
    assert abs(num - 2) <= 4 and abs(den - 4) <= 4  # P(|Z| > 4) < 1e-4 at scale 0.4
    doc = result_document(query, DEFS, [answer])
    (region,) = [c for c in doc["indicators"][0]["cells"] if c["scope"] == "region"]
    assert region["status"] == "released" and region["epsilon"] == 10.0
    assert region["ci95"][0] <= region["value"] <= region["ci95"][1]


def _reply(metrics: dict) -> RecordDict:
    return RecordDict(
        {
            "metrics": MetricRecord(metrics),
            "status": ConfigRecord({"org": "clinic-b", "status": "ok"}),
        }
    )


def test_egress_rule_for_indicator_answers() -> None:
    allowed = frozenset({"htn-control|all|all|num", "htn-control|all|all|den"})
    check_indicator_reply(_reply({"htn-control|all|all|num": 3, "epsilon": 1.0}), allowed)
    with pytest.raises(EgressViolation, match="not asked for"):
        check_indicator_reply(_reply({"dm-control|all|all|num": 3}), allowed)
    with pytest.raises(EgressViolation, match="integer"):
        check_indicator_reply(_reply({"htn-control|all|all|num": 3.5}), allowed)
    with pytest.raises(EgressViolation, match="allow-list"):
        bad = _reply({"epsilon": 1.0})
        bad.config_records["status"]["patient"] = "p1"
        check_indicator_reply(bad, allowed)


def test_a_reply_that_breaks_the_egress_rule_is_dropped_not_used(tmp_path: Path) -> None:
    grid = _grid(tmp_path, budget=100.0)
    real = grid.client_app

    def leaky(msg: Message, context):  # a node (or an attacker) adding an exact count
        reply = real(msg, context)
        reply.content.metric_records["metrics"]["exact-patients"] = 3
        return reply

    grid.client_app = leaky  # type: ignore[assignment]
    (answer,) = run_query(grid, _query(), DEFS, min_nodes=0)
    assert answer.status == "dropped" and "egress rule" in answer.reason and not answer.counts
