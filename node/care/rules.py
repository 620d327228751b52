"""Alert rules and control criteria as data: their model and the strict reader of their JSON.

A rule file (``pathways/<pathway>.rules.json``) holds ``rules`` and, for a pathway, ``control``
(when the patient counts as uncontrolled). Every rule names its ``source`` (guideline and
edition). Kinds:

- ``threshold``: a new reading meets any of ``any`` (``{"measure", "op", "value"}``);
- ``trend``: ``rise`` (latest minus the lowest reading within ``window`` is more than
  ``more_than``) or ``consecutive`` (the last ``count`` readings each meet one of ``any``);
- ``score``: a new score is ``at_least`` a value, or rose by ``rise_at_least`` from the previous;
- ``absence``: no reading of ``measure`` within the plan's interval for the activity
  ``activity_code`` plus ``grace``; or ``follow_up``: a planned visit overdue by ``grace``;
- ``risk``: a score ``at_least`` a value, or a model's ``RiskAssessment`` probability ``above``
  a threshold — only from a model the node's gate admits (``node/care/model_gate.py``: the
  floor is the node's ``care.model_min_auroc`` / ``care.model_min_events``, not the rule's).

Any rule may add ``condition``, a FHIRPath expression the new resource must satisfy (with
``%now``) — with ``on`` (``["system|code", …]``), the condition is evaluated only on resources
carrying one of those codes, a declared pre-filter that saves the FHIRPath call elsewhere — and
``suppressed_by`` (rules of the same file that, when they fire or are open, make
this one redundant: level-1 hypoglycaemia under level 2). Parsing errors are
:class:`RuleError` naming the file and the rule.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from node.care.expressions import Expression, ExpressionError, compile_expression
from node.care.timing import TimingError, parse_duration

__all__ = [
    "Comparison",
    "ControlCriterion",
    "Rule",
    "RuleError",
    "RuleSet",
    "parse_ruleset",
    "KINDS",
    "SEVERITIES",
]

KINDS = ("threshold", "trend", "score", "absence", "risk")
SEVERITIES = ("high", "moderate", "low")
OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
AGGREGATES = ("latest", "mean", "rise")


class RuleError(ValueError):
    """An invalid rule or pathway definition; the message names the file and the rule."""

    def __init__(self, file: str, rule: str | None, message: str, what: str = "rule") -> None:
        where = f"{file}: {what} {rule!r}" if rule else file
        super().__init__(f"{where}: {message}")
        self.file, self.rule, self.detail = file, rule, message


@dataclass(frozen=True)
class Comparison:
    measure: str
    op: str
    value: float

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.value)

    def describe(self) -> str:
        return f"{self.measure} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    title: str
    severity: str
    source: Mapping[str, str]
    measure: str | None = None
    any: tuple[Comparison, ...] = ()
    window: timedelta | None = None
    more_than: float | None = None
    count: int | None = None
    at_least: float | None = None
    rise_at_least: float | None = None
    activity_code: str | None = None
    follow_up: bool = False
    grace: timedelta = timedelta(0)
    model_system: str | None = None
    above: float | None = None
    condition: Expression | None = None
    # (system, code) pairs: the condition is evaluated only on resources with one of these codes
    # (a declared pre-filter — FHIRPath costs milliseconds a resource; the condition decides)
    on: frozenset[tuple[str, str]] = frozenset()
    acknowledge_within: timedelta | None = None
    suppressed_by: tuple[str, ...] = ()
    note: str | None = None

    def measures(self) -> frozenset[str]:
        named = {c.measure for c in self.any}
        if self.measure:
            named.add(self.measure)
        return frozenset(named)


@dataclass(frozen=True)
class ControlCriterion:
    measure: str
    aggregate: str
    op: str
    value: float
    window: timedelta | None

    def describe(self) -> str:
        span = f" over {self.window.days} d" if self.window else ""
        return f"{self.aggregate} {self.measure}{span} {self.op} {self.value:g}"


@dataclass(frozen=True)
class RuleSet:
    file: str
    rules: tuple[Rule, ...]
    control: tuple[ControlCriterion, ...]
    control_source: Mapping[str, str]


def _duration(file: str, rid: str | None, raw: Any, name: str) -> timedelta:
    try:
        return parse_duration(str(raw))
    except TimingError as exc:
        raise RuleError(file, rid, f"{name}: {exc}") from exc


def _number(file: str, rid: str | None, raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RuleError(file, rid, f"{name} must be a number, got {raw!r}")
    return float(raw)


def _comparisons(file: str, rid: str, raw: Any, measures: Sequence[str]) -> tuple[Comparison, ...]:
    if not isinstance(raw, list) or not raw:
        raise RuleError(file, rid, "'any' must be a non-empty list of {measure, op, value}")
    out = []
    for c in raw:
        if c.get("measure") not in measures:
            raise RuleError(file, rid, f"unknown measure {c.get('measure')!r}")
        if c.get("op") not in OPS:
            raise RuleError(file, rid, f"op must be one of {', '.join(OPS)}, got {c.get('op')!r}")
        out.append(Comparison(c["measure"], c["op"], _number(file, rid, c.get("value"), "value")))
    return tuple(out)


def _rule(file: str, raw: Mapping[str, Any], measures: Sequence[str]) -> Rule:
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise RuleError(file, None, "every rule needs a string 'id'")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RuleError(file, rid, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if raw.get("severity") not in SEVERITIES:
        raise RuleError(file, rid, f"severity must be one of {', '.join(SEVERITIES)}")
    source = raw.get("source")
    if not isinstance(source, dict) or not source.get("guideline") or not source.get("edition"):
        raise RuleError(file, rid, "source must name the guideline and its edition")
    measure = raw.get("measure")
    if measure is not None and measure not in measures:
        raise RuleError(file, rid, f"unknown measure {measure!r}")
    fields: dict[str, Any] = {}
    if "any" in raw:
        fields["any"] = _comparisons(file, rid, raw["any"], measures)
    for name in ("window", "grace", "acknowledge_within"):
        if name in raw:
            fields[name] = _duration(file, rid, raw[name], name)
    for name in ("more_than", "at_least", "rise_at_least", "above"):
        if name in raw:
            fields[name] = _number(file, rid, raw[name], name)
    for name in ("count",):
        if name in raw:
            fields[name] = int(_number(file, rid, raw[name], name))
    for name in ("activity_code", "model_system", "note"):
        if name in raw:
            fields[name] = str(raw[name])
    fields["follow_up"] = bool(raw.get("follow_up", False))
    fields["suppressed_by"] = tuple(str(x) for x in raw.get("suppressed_by", []))
    if "on" in raw:
        codes = raw["on"]
        if not isinstance(codes, list) or not all(
            isinstance(c, str) and c.count("|") == 1 and all(c.split("|")) for c in codes
        ):
            raise RuleError(file, rid, "'on' must be a list of 'system|code' strings")
        fields["on"] = frozenset(tuple(c.split("|")) for c in codes)
    if "condition" in raw:
        try:
            fields["condition"] = compile_expression(raw["condition"])
        except ExpressionError as exc:
            raise RuleError(file, rid, f"condition is not valid FHIRPath: {exc}") from exc
    rule = Rule(
        id=rid,
        kind=kind,
        title=str(raw.get("title") or rid),
        severity=raw["severity"],
        source=dict(source),
        measure=measure,
        **fields,
    )
    _check_shape(file, rule)
    return rule


def _check_shape(file: str, r: Rule) -> None:
    """Each kind has the fields it needs, so the engine never meets a half-defined rule."""
    need: list[str] = []
    if r.kind == "threshold" and not (r.any or r.condition):
        need.append("'any' or 'condition'")
    if r.kind == "trend":
        if r.more_than is not None:
            if not (r.measure and r.window):
                need.append("'measure' and 'window' for a rise")
        elif not (r.count and r.count >= 2 and r.any):
            need.append("'more_than' (rise) or 'count' >= 2 with 'any' (consecutive)")
    if r.kind == "score" and not (
        r.measure and (r.at_least is not None or r.rise_at_least is not None) or r.condition
    ):
        need.append("'measure' with 'at_least' or 'rise_at_least', or 'condition'")
    if r.kind == "absence" and not (r.follow_up or (r.measure and r.activity_code)):
        need.append("'follow_up' or 'measure' with 'activity_code'")
    if r.kind == "risk":
        if r.model_system is not None:
            if r.above is None:
                need.append("'above' for a model")
        elif not (r.measure and r.at_least is not None):
            need.append("'measure' with 'at_least', or 'model_system'")
    if need:
        raise RuleError(file, r.id, f"a {r.kind} rule needs {'; '.join(need)}")


def _control(file: str, raw: Mapping[str, Any], measures: Sequence[str]) -> ControlCriterion:
    if raw.get("measure") not in measures:
        raise RuleError(file, "control", f"unknown measure {raw.get('measure')!r}")
    if raw.get("aggregate") not in AGGREGATES:
        raise RuleError(file, "control", f"aggregate must be one of {', '.join(AGGREGATES)}")
    if raw.get("op") not in OPS:
        raise RuleError(file, "control", f"op must be one of {', '.join(OPS)}")
    window = _duration(file, "control", raw["window"], "window") if "window" in raw else None
    if raw["aggregate"] != "latest" and window is None:
        raise RuleError(file, "control", f"aggregate {raw['aggregate']!r} needs a window")
    value = _number(file, "control", raw.get("value"), "value")
    return ControlCriterion(raw["measure"], raw["aggregate"], raw["op"], value, window)


def parse_ruleset(file: str, doc: Mapping[str, Any], measures: Sequence[str]) -> RuleSet:
    """Read one rule file's JSON; :class:`RuleError` names the file and rule of any fault."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError(file, None, "a rule file is an object with a 'rules' list")
    rules = tuple(_rule(file, r, measures) for r in doc["rules"])
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuleError(file, dupes[0], "rule id used twice")
    for r in rules:
        unknown = [s for s in r.suppressed_by if s not in ids]
        if unknown:
            raise RuleError(file, r.id, f"suppressed_by names unknown rule {unknown[0]!r}")
    control_doc = doc.get("control") or {}
    control = tuple(_control(file, c, measures) for c in control_doc.get("uncontrolled_when", []))
    return RuleSet(file, rules, control, dict(control_doc.get("source", {})))
