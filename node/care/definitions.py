"""Load the pathways and their alert rules from the package's data files, refusing bad ones.

``pathways/<key>.json`` is a FHIR R4 ``collection`` Bundle holding one ``PlanDefinition`` (a
CPG-on-FHIR pathway) and its ``ActivityDefinition`` s; ``pathways/<key>.rules.json`` its alert
rules and control criteria; ``shared.rules.json`` the rules every pathway's patients share;
``measures.json`` the measure catalog. At startup :func:`load_definitions` validates every
Bundle with ``fhir.resources.R4B``, resolves every ``definitionCanonical`` and ``goalId``,
compiles every FHIRPath (action conditions and rule conditions), and checks that every
PlanDefinition, ActivityDefinition and rule cites its guideline. Any fault is a
:class:`~node.care.rules.RuleError` naming the file and the rule (or action).

This module reads files; everything it returns is plain data for the pure core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from node.care.expressions import Expression, ExpressionError, compile_expression
from node.care.measures import MeasureCatalog
from node.care.rules import ControlCriterion, Rule, RuleError, parse_ruleset

__all__ = [
    "CareDefinitions",
    "Pathway",
    "load_definitions",
    "load_catalog",
    "PATHWAY_DIR",
    "RuleError",
]

PATHWAY_DIR = Path(__file__).parent / "pathways"


@dataclass(frozen=True)
class Pathway:
    key: str
    file: str
    plan_definition: Mapping[str, Any]
    activity_definitions: Mapping[str, Mapping[str, Any]]  # by canonical url
    conditions: Mapping[str, Expression]  # action id -> applicability condition
    rules: tuple[Rule, ...]  # the pathway's own, then the shared ones
    control: tuple[ControlCriterion, ...]
    enrolment: tuple[tuple[str, str], ...]  # (system, code)
    catalog: MeasureCatalog

    @property
    def url(self) -> str:
        return str(self.plan_definition["url"])

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.plan_definition['version']}"

    @property
    def title(self) -> str:
        return str(self.plan_definition.get("title") or self.key)


@dataclass(frozen=True)
class CareDefinitions:
    pathways: tuple[Pathway, ...]
    catalog: MeasureCatalog

    def by_url(self, url: str) -> Pathway | None:
        base = url.split("|", 1)[0]
        return next((p for p in self.pathways if p.url == base), None)

    def by_key(self, key: str) -> Pathway | None:
        return next((p for p in self.pathways if p.key == key), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuleError(path.name, None, f"cannot read JSON: {exc}") from exc


def _validate_bundle(file: str, doc: Any) -> None:
    from fhir.resources.R4B.bundle import Bundle

    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise RuleError(file, None, "a pathway file is a FHIR R4 collection Bundle")
    try:
        Bundle.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise RuleError(file, None, f"not a valid FHIR R4 Bundle at {loc}: {first['msg']}") from exc


PUBLICATION_STATUS = ("draft", "active", "retired", "unknown")
# R4 ActivityDefinition.kind (required binding, request-resource-types) used by $apply here
ACTIVITY_KINDS = ("CommunicationRequest", "MedicationRequest", "ServiceRequest", "Task")


def _bindings(file: str, resources: list[Mapping[str, Any]]) -> None:
    """The required bindings pydantic does not check, for what $apply relies on."""
    for res in resources:
        rtype = res["resourceType"]
        definitional = rtype in ("PlanDefinition", "ActivityDefinition")
        if definitional and res.get("status") not in PUBLICATION_STATUS:
            raise RuleError(
                file,
                res.get("id"),
                f"{rtype}.status {res.get('status')!r} is not one of "
                + ", ".join(PUBLICATION_STATUS),
                "resource",
            )
        if rtype == "ActivityDefinition" and res.get("kind") not in ACTIVITY_KINDS:
            raise RuleError(
                file,
                res.get("id"),
                f"ActivityDefinition.kind must be one of {ACTIVITY_KINDS}",
                "resource",
            )


def _cites(resource: Mapping[str, Any]) -> bool:
    return any(a.get("type") == "citation" for a in resource.get("relatedArtifact", []))


def _enrolment(file: str, pd: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    codes: list[tuple[str, str]] = []
    for ctx in pd.get("useContext", []):
        if ctx.get("code", {}).get("code") == "focus":
            for c in ctx.get("valueCodeableConcept", {}).get("coding", []):
                codes.append((c.get("system", ""), c.get("code", "")))
    if not codes:
        raise RuleError(file, None, "PlanDefinition.useContext 'focus' must list enrolment codes")
    return tuple(codes)


def _actions(file: str, pd: Mapping[str, Any], ads: Mapping[str, Any]) -> dict[str, Expression]:
    goal_ids = {g.get("id") for g in pd.get("goal", [])}
    conditions: dict[str, Expression] = {}
    for action in pd.get("action", []):
        aid = action.get("id")
        if not aid:
            raise RuleError(file, None, "every PlanDefinition.action needs an id")
        if action.get("definitionCanonical") not in ads:
            raise RuleError(
                file,
                aid,
                f"definitionCanonical {action.get('definitionCanonical')!r} not found",
                "action",
            )
        missing = [g for g in action.get("goalId", []) if g not in goal_ids]
        if missing:
            raise RuleError(file, aid, f"goalId {missing[0]!r} is not a goal of the plan", "action")
        for cond in action.get("condition", []):
            expr = cond.get("expression", {})
            if cond.get("kind") != "applicability" or expr.get("language") != "text/fhirpath":
                raise RuleError(
                    file, aid, "conditions must be applicability, text/fhirpath", "action"
                )
            try:
                conditions[aid] = compile_expression(expr.get("expression", ""))
            except ExpressionError as exc:
                raise RuleError(
                    file, aid, f"condition is not valid FHIRPath: {exc}", "action"
                ) from exc
    return conditions


def _pathway(path: Path, shared: tuple[Rule, ...], catalog: MeasureCatalog) -> Pathway:
    file = path.name
    doc = _read_json(path)
    _validate_bundle(file, doc)
    resources = [e["resource"] for e in doc.get("entry", [])]
    _bindings(file, resources)
    pds = [r for r in resources if r["resourceType"] == "PlanDefinition"]
    if len(pds) != 1:
        raise RuleError(file, None, f"expected one PlanDefinition, found {len(pds)}")
    pd = pds[0]
    ads = {r["url"]: r for r in resources if r["resourceType"] == "ActivityDefinition"}
    for res in [pd, *ads.values()]:
        if not res.get("url") or not res.get("version"):
            raise RuleError(
                file, res.get("id"), f"{res['resourceType']} needs url and version", "resource"
            )
        if not _cites(res):
            raise RuleError(
                file, res.get("id"), "relatedArtifact must cite the guideline", "resource"
            )
    for goal in pd.get("goal", []):
        if not any(d.get("type") == "citation" for d in goal.get("documentation", [])):
            raise RuleError(
                file, goal.get("id"), "goal.documentation must cite the guideline", "goal"
            )
    conditions = _actions(file, pd, ads)
    rules_path = path.with_name(path.name.removesuffix(".json") + ".rules.json")
    if not rules_path.exists():
        raise RuleError(file, None, f"no rule file {rules_path.name}")
    ruleset = parse_ruleset(rules_path.name, _read_json(rules_path), list(catalog.measures))
    own = {r.id for r in ruleset.rules}
    clash = next((r.id for r in shared if r.id in own), None)
    if clash:
        raise RuleError(rules_path.name, clash, "rule id also used in shared.rules.json")
    return Pathway(
        key=path.name.removesuffix(".json"),
        file=file,
        plan_definition=pd,
        activity_definitions=ads,
        conditions=conditions,
        rules=ruleset.rules + shared,
        control=ruleset.control,
        enrolment=_enrolment(file, pd),
        catalog=catalog,
    )


def load_catalog(directory: Path = PATHWAY_DIR) -> MeasureCatalog:
    """The measure catalog alone (units and plausible ranges of readings)."""
    return MeasureCatalog.from_json(_read_json(directory / "measures.json"))


def load_definitions(directory: Path = PATHWAY_DIR) -> CareDefinitions:
    """Every pathway in ``directory`` with its rules; :class:`RuleError` on the first fault."""
    catalog = load_catalog(directory)
    shared = parse_ruleset(
        "shared.rules.json", _read_json(directory / "shared.rules.json"), list(catalog.measures)
    ).rules
    files = sorted(
        p
        for p in directory.glob("*.json")
        if not p.name.endswith(".rules.json") and p.name != "measures.json"
    )
    if not files:
        raise RuleError(str(directory), None, "no pathway files")
    return CareDefinitions(tuple(_pathway(p, shared, catalog) for p in files), catalog)
