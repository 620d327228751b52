"""The pure rule engine, one group of tests per rule kind."""

from __future__ import annotations

import dataclasses

from node.care.engine import AlertDecision, ControlChange, evaluate
from node.care.model_gate import GateVerdict, ModelFloor, gate, label

from .fixtures import (
    LOCAL_MEASURE,
    LOINC,
    PATIENT,
    at,
    bp,
    cat,
    feed,
    obs,
    plan_for,
    weight,
)


def _rules(decisions) -> list[str]:
    return [d.rule.id for d in decisions if isinstance(d, AlertDecision)]


# --- threshold ----------------------------------------------------------------------------------


def test_threshold_bp_186_112_raises_the_urgent_hypertension_alert():
    decisions = evaluate(plan_for("hypertension"), [bp(186, 112, at())], [], set(), at(0, 1))
    assert _rules(decisions) == ["htn-bp-urgent"]
    alert = decisions[0]
    assert alert.rule.severity == "high"
    assert alert.evidence[0].startswith("Observation/")
    assert "systolic 186" in alert.summary and "diastolic 112" in alert.summary


def test_threshold_in_range_bp_raises_nothing():
    assert (
        _rules(evaluate(plan_for("hypertension"), [bp(128, 78, at())], [], set(), at(0, 1))) == []
    )


def test_threshold_diastolic_alone_at_110_is_urgent():
    assert _rules(
        evaluate(plan_for("hypertension"), [bp(150, 110, at())], [], set(), at(0, 1))
    ) == ["htn-bp-urgent"]


def test_threshold_news2_single_parameters_shared_by_every_pathway():
    spo2 = obs("59408-5", 90, "%", at())
    pulse = obs("8867-4", 132, "/min", at())
    for key in ("heart-failure", "copd", "type-2-diabetes", "hypertension"):
        got = _rules(evaluate(plan_for(key), [spo2, pulse], [], set(), at(0, 1)))
        assert got == ["news2-spo2-low", "news2-pulse-extreme"], key
    news2 = [r for r in plan_for("copd").pathway.rules if r.id.startswith("news2")]
    assert news2 and all("not validated" in r.title for r in news2)


def test_threshold_level1_hypoglycaemia_is_suppressed_by_level2():
    plan = plan_for("type-2-diabetes")
    low2 = obs("15074-8", 2.8, "mmol/L", at())
    assert _rules(evaluate(plan, [low2], [], set(), at(0, 1))) == ["dm-hypo-level2"]
    low1 = obs("15074-8", 3.5, "mmol/L", at())
    assert _rules(evaluate(plan, [low1], [], set(), at(0, 1))) == ["dm-hypo-level1"]
    mgdl = obs("2339-0", 50, "mg/dL", at())  # 50 mg/dL = 2.8 mmol/L
    assert _rules(evaluate(plan, [mgdl], [], set(), at(0, 1))) == ["dm-hypo-level2"]


def test_other_patients_data_is_ignored():
    other = bp(190, 120, at(), patient="Patient/p2")
    assert _rules(evaluate(plan_for("hypertension"), [other], [], set(), at(0, 1))) == []


# --- trend --------------------------------------------------------------------------------------


def test_trend_hf_weight_rising_2_5_kg_in_three_days_alerts_once_with_evidence():
    series = [weight(70.0 + 0.85 * d, at(d)) for d in range(4)]  # 70 → 72.55 kg
    alerts = feed(plan_for("heart-failure"), series)
    assert [a.rule.id for a in alerts] == ["hf-weight-gain-3d"]
    assert alerts[0].evidence == (
        f"Observation/{series[0]['id']}",
        f"Observation/{series[3]['id']}",
    )


def test_trend_hf_weight_gain_of_exactly_2_kg_or_over_longer_than_3_days_is_quiet():
    exactly = [weight(70.0, at(0)), weight(71.0, at(1)), weight(72.0, at(3))]
    assert feed(plan_for("heart-failure"), exactly) == []
    slow = [weight(70.0 + 0.6 * d, at(d)) for d in range(6)]  # 3 kg over 5 days
    assert feed(plan_for("heart-failure"), slow) == []


def test_trend_three_consecutive_uncontrolled_bp_readings():
    readings = [bp(142, 80, at(0)), bp(138, 86, at(1)), bp(150, 90, at(2))]
    alerts = feed(plan_for("hypertension"), readings)
    assert [a.rule.id for a in alerts] == ["htn-bp-uncontrolled-x3"]
    assert len(alerts[0].evidence) == 3


def test_trend_a_controlled_reading_breaks_the_run():
    readings = [bp(142, 80, at(0)), bp(128, 80, at(1)), bp(150, 90, at(2)), bp(140, 88, at(3))]
    assert feed(plan_for("hypertension"), readings) == []


# --- score --------------------------------------------------------------------------------------


def test_score_cat_at_or_above_10_and_a_rise_of_2():
    plan = plan_for("copd")
    assert _rules(evaluate(plan, [cat(12, at(1))], [cat(11, at(0))], set(), at(1, 1))) == [
        "copd-cat-high"
    ]
    assert _rules(evaluate(plan, [cat(8, at(1))], [cat(6, at(0))], set(), at(1, 1))) == [
        "copd-cat-rise"
    ]
    assert _rules(evaluate(plan, [cat(7, at(1))], [cat(6, at(0))], set(), at(1, 1))) == []


def test_score_phq9_item9_above_zero_by_fhirpath_condition():
    plan = plan_for("heart-failure")
    positive = obs("44260-8", 1, None, at())
    assert _rules(evaluate(plan, [positive], [], set(), at(0, 1))) == ["phq9-item9-positive"]
    zero = obs("44260-8", 0, None, at())
    assert _rules(evaluate(plan, [zero], [], set(), at(0, 1))) == []
    other_item = obs("44259-0", 3, None, at())  # a different PHQ-9 item
    assert _rules(evaluate(plan, [other_item], [], set(), at(0, 1))) == []


def test_a_condition_rule_is_evaluated_only_on_the_codes_it_declares():
    plan = plan_for("heart-failure")
    phq9 = next(r for r in plan.pathway.rules if r.id == "phq9-item9-positive")
    assert phq9.on == {("http://loinc.org", "44260-8")}
    elsewhere = dataclasses.replace(phq9, on=frozenset({("http://loinc.org", "0000-0")}))
    rules = tuple(elsewhere if r.id == phq9.id else r for r in plan.pathway.rules)
    narrowed = dataclasses.replace(plan, pathway=dataclasses.replace(plan.pathway, rules=rules))
    positive = obs("44260-8", 1, None, at())
    assert _rules(evaluate(narrowed, [positive], [], set(), at(0, 1))) == []


# --- absence ------------------------------------------------------------------------------------


def _careplan(activity_code: str, period: dict, start) -> dict:
    return {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "period": {"start": start.isoformat()},
        "activity": [
            {
                "detail": {
                    "status": "in-progress",
                    "code": {"coding": [{"system": LOINC, "code": activity_code}]},
                    "scheduledTiming": {"repeat": period},
                }
            }
        ],
    }


def test_absence_no_daily_weight_for_interval_plus_grace():
    careplan = _careplan("29463-7", {"frequency": 1, "period": 1, "periodUnit": "d"}, at(0))
    plan = plan_for("heart-failure", careplan=careplan)
    last = weight(70, at(1))
    assert _rules(evaluate(plan, [], [last], set(), at(2, 23))) == []  # within 1 d + 1 d grace
    late = evaluate(plan, [], [last], set(), at(3, 1))
    assert _rules(late) == ["hf-weight-missing"]
    assert late[0].evidence == ("CarePlan/cp1",)
    young = dataclasses.replace(plan, careplan={**careplan, "period": {"start": at(3).isoformat()}})
    assert _rules(evaluate(young, [], [], set(), at(3, 1))) == []  # plan younger than its interval


def _task(due, status="requested"):
    return {
        "resourceType": "Task",
        "id": "t1",
        "status": status,
        "authoredOn": at(0).isoformat(),
        "for": {"reference": PATIENT},
        "restriction": {"period": {"end": due.isoformat()}},
    }


def test_absence_follow_up_overdue_after_grace_unless_a_visit_happened():
    plan = plan_for("hypertension", follow_ups=(_task(at(14)),))
    assert _rules(evaluate(plan, [], [], set(), at(16))) == []  # grace is 3 days
    assert _rules(evaluate(plan, [], [], set(), at(17, 1))) == ["follow-up-overdue"]
    visit = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "subject": {"reference": PATIENT},
        "period": {"start": at(15).isoformat()},
    }
    assert _rules(evaluate(plan, [], [visit], set(), at(17, 1))) == []
    done = plan_for("hypertension", follow_ups=(_task(at(14), "completed"),))
    assert _rules(evaluate(done, [], [], set(), at(17, 1))) == []


# --- risk ---------------------------------------------------------------------------------------


def _assessment(p: float, model: str = "readmit-v3") -> dict:
    return {
        "resourceType": "RiskAssessment",
        "id": "ra1",
        "status": "final",
        "subject": {"reference": PATIENT},
        "method": {
            "coding": [
                {
                    "system": "https://ipjms.example.org/fhir/CodeSystem/federated-model",
                    "code": model,
                }
            ]
        },
        "prediction": [{"probabilityDecimal": p}],
    }


def test_risk_lace_10_or_more():
    plan = plan_for("heart-failure")
    lace = obs("lace-index", 11, None, at(), system=LOCAL_MEASURE)
    assert _rules(evaluate(plan, [lace], [], set(), at(0, 1))) == ["lace-high"]
    low = obs("lace-index", 9, None, at(), system=LOCAL_MEASURE)
    assert _rules(evaluate(plan, [low], [], set(), at(0, 1))) == []


def test_risk_model_alerts_only_when_the_gate_admits_it():
    floor = ModelFloor(0.70, 100)

    def verdicts(auroc: float, events: int) -> dict[str, GateVerdict]:
        card = {"evaluation": {"auroc": auroc, "events": events}}
        return {"readmit-v3": gate("readmit-v3", card, floor)}

    high = _assessment(0.45)
    good = verdicts(0.78, 240)
    assert _rules(
        evaluate(plan_for("heart-failure", model_verdicts=good), [high], [], set(), at())
    ) == ["readmission-model-high"]
    for gated in (verdicts(0.31, 240), verdicts(0.80, 12), {}):
        plan = plan_for("heart-failure", model_verdicts=gated)
        assert _rules(evaluate(plan, [high], [], set(), at())) == []
    plan = plan_for("heart-failure", model_verdicts=good)
    assert _rules(evaluate(plan, [_assessment(0.2)], [], set(), at())) == []
    # a score already labelled not for clinical use never alerts, whatever the verdict now
    weak = gate("readmit-v3", {"evaluation": {"auroc": 0.31, "events": 240}}, floor)
    assert _rules(evaluate(plan, [label(high, weak)], [], set(), at())) == []


# --- open alerts, control -----------------------------------------------------------------------


def test_an_open_alert_for_the_same_rule_and_patient_blocks_a_second():
    plan = plan_for("hypertension")
    assert (
        _rules(evaluate(plan, [bp(190, 100, at())], [], {(PATIENT, "htn-bp-urgent")}, at())) == []
    )
    other = {("Patient/p2", "htn-bp-urgent")}
    assert _rules(evaluate(plan, [bp(190, 100, at())], [], other, at())) == ["htn-bp-urgent"]


def test_control_status_changes_are_decisions_with_a_reason():
    plan = plan_for("hypertension", control_status="controlled")
    recent = [bp(140, 88, at(d)) for d in range(3)]
    decisions = evaluate(plan, [bp(138, 86, at(3))], recent, set(), at(3, 1))
    changes = [d for d in decisions if isinstance(d, ControlChange)]
    assert len(changes) == 1 and changes[0].status == "uncontrolled"
    assert "mean systolic" in changes[0].reason
    same = dataclasses.replace(plan, control_status="uncontrolled")
    assert not [
        d for d in evaluate(same, [], recent, set(), at(3, 1)) if isinstance(d, ControlChange)
    ]


def test_readings_after_the_clock_are_not_counted():
    plan = plan_for("heart-failure")
    future = weight(73, at(2))  # counted, it would make the 3-day rise 3 kg: uncontrolled
    decisions = evaluate(plan, [weight(71, at(1))], [weight(70, at(0)), future], set(), at(1, 1))
    assert [(type(d).__name__, d.status) for d in decisions] == [("ControlChange", "controlled")]


def test_old_readings_arriving_late_are_context_not_news():
    plan = plan_for("hypertension")
    old = bp(190, 115, at(-8))  # taken 8 days ago, written now (e.g. an imported referral)
    assert _rules(evaluate(plan, [old], [], set(), at())) == []
    recent = bp(190, 115, at(-6))
    assert _rules(evaluate(plan, [recent], [], set(), at())) == ["htn-bp-urgent"]
