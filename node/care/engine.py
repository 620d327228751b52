"""The care engine: one pure function from (plan, new data, recent data, open alerts, clock) to
decisions — alerts to open and control-status changes. No I/O, no clock reads, no globals:
the same inputs give the same decisions.

- Only the plan's patient's data counts (``subject``/``patient``/``for`` must name it).
- Threshold, trend, score and risk rules fire on *new* data (the recent data is context: the
  window of a trend, the previous score); absence rules compare the clock with the plan.
- A new reading taken more than ``FRESH_FOR`` (7 days) before the clock fires nothing: history
  arriving late (an imported referral, a first catch-up of the commit log) is context, not news.
- A rule whose alert is open for the patient never fires again (``open_alerts`` holds
  ``(patient, rule id)`` pairs), and a rule ``suppressed_by`` another that fires or is open
  stays quiet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from node.care.control import UNKNOWN, control_status
from node.care.measures import Reading, parse_instant, readings, reference_of
from node.care.model_gate import GateVerdict, is_labelled
from node.care.rules import Rule
from node.care.timing import TimingError, timing_interval

if TYPE_CHECKING:
    from node.care.definitions import Pathway

__all__ = [
    "AlertDecision",
    "ControlChange",
    "Decision",
    "PlanContext",
    "evaluate",
    "subject_of",
]

OPEN_TASK = frozenset({"requested", "received", "accepted", "ready", "in-progress", "on-hold"})
VISITED = frozenset({"arrived", "in-progress", "finished"})
FINAL = frozenset({"final", "amended", "corrected"})
FRESH_FOR = timedelta(days=7)


@dataclass(frozen=True)
class PlanContext:
    """A patient's plan on one pathway, as the engine needs it."""

    patient: str  # "Patient/123"
    pathway: Pathway
    careplan: Mapping[str, Any] | None = None
    follow_ups: tuple[Mapping[str, Any], ...] = ()  # the plan's follow-up Tasks
    practitioner: str | None = None  # "Practitioner/…", the responsible doctor
    control_status: str = UNKNOWN
    # the gate's verdict on each model whose RiskAssessments may be in the new data (model id →
    # verdict, node/care/model_gate.py); a model without one never alerts
    model_verdicts: Mapping[str, GateVerdict] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertDecision:
    rule: Rule
    patient: str
    pathway: str
    evidence: tuple[str, ...]
    summary: str
    at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.patient, self.rule.id)


@dataclass(frozen=True)
class ControlChange:
    patient: str
    pathway: str
    previous: str
    status: str
    reason: str
    at: datetime


Decision = AlertDecision | ControlChange


def subject_of(resource: Mapping[str, Any]) -> str | None:
    for name in ("subject", "patient", "for"):
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def _mine(resources: Iterable[Mapping[str, Any]], patient: str) -> list[Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for res in resources:
        if subject_of(res) == patient:
            out[reference_of(res)] = res  # a later version of the same resource wins
    return list(out.values())


@dataclass(frozen=True)
class _Facts:
    clock: datetime
    new: list[Mapping[str, Any]]
    everything: list[Mapping[str, Any]]
    new_rows: list[Reading]
    rows: list[Reading]  # every reading up to the clock, oldest first


def _by_source(rows: Sequence[Reading]) -> list[tuple[str, dict[str, float]]]:
    groups: dict[str, dict[str, float]] = {}
    for r in rows:
        groups.setdefault(r.source, {})[r.measure] = r.value
    return list(groups.items())


def _condition_ok(rule: Rule, resource: Mapping[str, Any] | None, clock: datetime) -> bool:
    if rule.condition is None:
        return True
    if resource is None:
        return False
    if rule.on and not any(
        (c.get("system"), c.get("code")) in rule.on
        for c in (resource.get("code") or {}).get("coding", [])
    ):
        return False
    return rule.condition.is_true(resource, {"now": clock.isoformat()})


def _resource(facts: _Facts, ref: str) -> Mapping[str, Any] | None:
    return next((r for r in facts.new if reference_of(r) == ref), None)


def _threshold(rule: Rule, facts: _Facts) -> tuple[tuple[str, ...], str] | None:
    if not rule.any:
        for res in facts.new:
            if _condition_ok(rule, res, facts.clock):
                return (reference_of(res),), rule.title
        return None
    for source, values in _by_source(facts.new_rows):
        met = [c for c in rule.any if c.measure in values and c.holds(values[c.measure])]
        if met and _condition_ok(rule, _resource(facts, source), facts.clock):
            shown = ", ".join(f"{c.measure} {values[c.measure]:g}" for c in met)
            return (source,), f"{rule.title}: {shown}"
    return None


def _trend(rule: Rule, facts: _Facts) -> tuple[tuple[str, ...], str] | None:
    if rule.more_than is not None and rule.window is not None:
        series = [r for r in facts.rows if r.measure == rule.measure]
        for new in (r for r in facts.new_rows if r.measure == rule.measure):
            earlier = [r for r in series if new.time - rule.window <= r.time < new.time]
            if earlier:
                low = min(earlier, key=lambda r: r.value)
                if new.value - low.value > rule.more_than:
                    gain = new.value - low.value
                    return (low.source, new.source), f"{rule.title}: +{gain:.1f} in the window"
        return None
    measures = {c.measure for c in rule.any}
    groups = [g for g in _by_source(facts.rows) if measures & set(g[1])]
    new_sources = {r.source for r in facts.new_rows}
    last = groups[-(rule.count or 0) :]
    if len(last) < (rule.count or 0) or last[-1][0] not in new_sources:
        return None
    if all(any(c.measure in v and c.holds(v[c.measure]) for c in rule.any) for _, v in last):
        return tuple(s for s, _ in last), f"{rule.title} ({len(last)} readings)"
    return None


def _score(rule: Rule, facts: _Facts) -> tuple[tuple[str, ...], str] | None:
    if rule.measure is None:
        return _threshold(rule, facts)
    series = [r for r in facts.rows if r.measure == rule.measure]
    for new in (r for r in facts.new_rows if r.measure == rule.measure):
        if not _condition_ok(rule, _resource(facts, new.source), facts.clock):
            continue
        if rule.at_least is not None and new.value >= rule.at_least:
            return (new.source,), f"{rule.title}: {new.value:g}"
        before = [r for r in series if r.time < new.time]
        if rule.rise_at_least is not None and before:
            rise = new.value - before[-1].value
            if rise >= rule.rise_at_least:
                return (before[-1].source, new.source), f"{rule.title}: +{rise:g}"
    return None


def _risk(rule: Rule, facts: _Facts, verdicts: Mapping[str, GateVerdict]) -> tuple[Any, str] | None:
    if rule.model_system is None:
        return _score(rule, facts)
    for res in facts.new:
        if res.get("resourceType") != "RiskAssessment" or res.get("status") not in FINAL:
            continue
        codings = res.get("method", {}).get("coding", [])
        model = next((c.get("code") for c in codings if c.get("system") == rule.model_system), None)
        if model is None or is_labelled(res):
            continue  # a score labelled not for clinical use never alerts
        verdict = verdicts.get(str(model))
        if verdict is None or not verdict.clinical_use:
            continue
        p = (res.get("prediction") or [{}])[0].get("probabilityDecimal")
        if isinstance(p, int | float) and rule.above is not None and p > rule.above:
            return (reference_of(res),), f"{rule.title}: {p:.2f} (model {model})"
    return None


def _absence(rule: Rule, facts: _Facts, plan: PlanContext) -> tuple[Any, str] | None:
    if rule.follow_up:
        return _overdue(rule, facts, plan)
    if plan.careplan is None:
        return None
    start = parse_instant((plan.careplan.get("period") or {}).get("start"))
    for activity in plan.careplan.get("activity", []):
        detail = activity.get("detail") or {}
        codes = {c.get("code") for c in (detail.get("code") or {}).get("coding", [])}
        if rule.activity_code not in codes or detail.get("status") in ("completed", "cancelled"):
            continue
        try:
            allowed = timing_interval(detail.get("scheduledTiming") or {}, facts.clock) + rule.grace
        except TimingError:
            continue
        if start is None or facts.clock - start < allowed:
            return None  # the plan is younger than one interval
        last = [r for r in facts.rows if r.measure == rule.measure]
        if not last or facts.clock - last[-1].time > allowed:
            return (reference_of(plan.careplan),), rule.title
    return None


def _overdue(rule: Rule, facts: _Facts, plan: PlanContext) -> tuple[Any, str] | None:
    for task in plan.follow_ups:
        if task.get("resourceType") != "Task" or task.get("status") not in OPEN_TASK:
            continue
        due = parse_instant(((task.get("restriction") or {}).get("period") or {}).get("end"))
        if due is None or facts.clock <= due + rule.grace:
            continue
        since = parse_instant(task.get("authoredOn")) or due
        visits = [
            e
            for e in facts.everything
            if e.get("resourceType") == "Encounter"
            and e.get("status") in VISITED
            and (parse_instant((e.get("period") or {}).get("start")) or due) >= since
        ]
        if not visits:
            return (reference_of(task),), f"{rule.title} (due {due.date().isoformat()})"
    return None


def _fire(rule: Rule, facts: _Facts, plan: PlanContext) -> tuple[Any, str] | None:
    if rule.kind == "threshold":
        return _threshold(rule, facts)
    if rule.kind == "trend":
        return _trend(rule, facts)
    if rule.kind == "score":
        return _score(rule, facts)
    if rule.kind == "risk":
        return _risk(rule, facts, plan.model_verdicts)
    return _absence(rule, facts, plan)


def evaluate(
    plan: PlanContext,
    new_data: Sequence[Mapping[str, Any]],
    recent_data: Sequence[Mapping[str, Any]],
    open_alerts: Iterable[tuple[str, str]],
    clock: datetime,
) -> list[Decision]:
    """Decisions for ``plan`` given the data just committed, the patient's recent data, the
    ``(patient, rule id)`` pairs of open alerts, and the time now."""
    catalog = plan.pathway.catalog
    new = _mine(new_data, plan.patient)
    everything = _mine([*recent_data, *new_data], plan.patient)
    rows = [r for r in readings(everything, catalog) if r.time <= clock]
    new_refs = {reference_of(r) for r in new}
    fresh = [r for r in rows if r.source in new_refs and r.time >= clock - FRESH_FOR]
    facts = _Facts(clock, new, everything, fresh, rows)
    open_now = {rule for patient, rule in open_alerts if patient == plan.patient}
    fired: list[AlertDecision] = []
    for rule in plan.pathway.rules:
        if rule.id in open_now:
            continue
        hit = _fire(rule, facts, plan)
        if hit is not None:
            evidence, summary = hit
            fired.append(
                AlertDecision(rule, plan.patient, plan.pathway.key, evidence, summary, clock)
            )
    active = open_now | {d.rule.id for d in fired}
    decisions: list[Decision] = [
        d for d in fired if not any(s in active for s in d.rule.suppressed_by)
    ]
    verdict = control_status(plan.pathway.control, rows, clock)
    if verdict.status != UNKNOWN and verdict.status != plan.control_status:
        decisions.append(
            ControlChange(
                plan.patient,
                plan.pathway.key,
                plan.control_status,
                verdict.status,
                verdict.reason,
                clock,
            )
        )
    return decisions
