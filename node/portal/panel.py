"""The doctor's patient panel: patients under an active care plan at this node, with their
pathways, control status, open alerts and latest risk — sorted by the most severe open alert,
then risk. ``panel_rows`` is pure; ``load_panel`` does the store reads (five searches, whatever
the panel's size)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.care.apply import CONTROL_EXT, PLAN_ID_SYSTEM
from node.care.model_gate import is_labelled
from node.store import FhirStore

__all__ = ["PanelRow", "panel_rows", "load_panel", "SEVERITY_RANK", "CONTROL_RANK"]

SEVERITY_RANK = {"high": 3, "moderate": 2, "low": 1}
CONTROL_RANK = {"uncontrolled": 3, "unknown": 2, "controlled": 1}
_PAGE = 1000  # the store's largest page (node.store.search_query.MAX_COUNT)


@dataclass
class PanelRow:
    patient: str  # "Patient/<id>": never put in a URL (pages use the session's handles)
    name: str
    gender: str
    birth_date: str
    pathways: list[str] = field(default_factory=list)
    control: str = ""  # the worst of its plans (empty only while being built)
    open_alerts: int = 0
    top_severity: str | None = None
    risk: float | None = None

    @property
    def sort_key(self) -> tuple[int, float, str]:
        return (-SEVERITY_RANK.get(self.top_severity or "", 0), -(self.risk or 0.0), self.patient)


def _ref(value: Mapping[str, Any] | None) -> str:
    return str((value or {}).get("reference", ""))


def person_name(patient: Mapping[str, Any]) -> str:
    for name in patient.get("name", []):
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("given", []), name.get("family", "")]
        text = " ".join(p for p in parts if p)
        if text:
            return text
    return "?"


def pathway_key(plan: Mapping[str, Any]) -> str:
    for ident in plan.get("identifier", []):
        if ident.get("system") == PLAN_ID_SYSTEM:
            return str(ident.get("value", "")).split("/")[0]
    return str(plan.get("title", "?"))


def control_of(plan: Mapping[str, Any]) -> str:
    for ext in plan.get("extension", []):
        if ext.get("url") == CONTROL_EXT:
            return str(ext.get("valueCode", "unknown"))
    return "unknown"


def risk_of(assessment: Mapping[str, Any]) -> float | None:
    for prediction in assessment.get("prediction", []):
        value = prediction.get("probabilityDecimal")
        if isinstance(value, int | float):
            return float(value)
    return None


def panel_rows(
    plans: Iterable[Mapping[str, Any]],
    patients: Iterable[Mapping[str, Any]],  # may be only those to show: see name_rows
    open_issues: Iterable[Mapping[str, Any]],
    risks: Iterable[Mapping[str, Any]],
    *,
    pathway: str | None = None,
    control: str | None = None,
) -> list[PanelRow]:
    """Rows of the panel, filtered by pathway key and control status, most urgent first."""
    rows: dict[str, PanelRow] = {}
    for plan in plans:
        ref = _ref(plan.get("subject"))
        if not ref.startswith("Patient/"):
            continue
        row = rows.get(ref)
        if row is None:
            row = rows[ref] = PanelRow(ref, "", "", "")
        row.pathways.append(pathway_key(plan))
        status = control_of(plan)
        if CONTROL_RANK.get(status, 0) > CONTROL_RANK.get(row.control, 0):
            row.control = status
    for issue in open_issues:
        row = rows.get(_ref(issue.get("patient")))
        if row is None:
            continue
        row.open_alerts += 1
        severity = str(issue.get("severity", "low"))
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(row.top_severity or "", 0):
            row.top_severity = severity
    latest: dict[str, str] = {}
    for assessment in risks:
        row = rows.get(_ref(assessment.get("subject")))
        value = risk_of(assessment)
        when = str(assessment.get("occurrenceDateTime", ""))
        if row is None or value is None or when < latest.get(row.patient, ""):
            continue
        if is_labelled(assessment):  # a score not for clinical use ranks no one
            continue
        latest[row.patient] = when
        row.risk = value
    selected = [
        r
        for r in rows.values()
        if (not pathway or pathway in r.pathways) and (not control or r.control == control)
    ]
    return name_rows(sorted(selected, key=lambda r: r.sort_key), patients)


def name_rows(rows: list[PanelRow], patients: Iterable[Mapping[str, Any]]) -> list[PanelRow]:
    """Fill in name, gender and birth date of the rows whose Patient is given."""
    by_ref = {f"Patient/{p['id']}": p for p in patients}
    for row in rows:
        patient = by_ref.get(row.patient)
        if patient is not None:
            row.name = person_name(patient)
            row.gender = str(patient.get("gender", ""))
            row.birth_date = str(patient.get("birthDate", ""))
    return rows


def search_all(
    store: FhirStore, rtype: str, params: list[tuple[str, str]], *, compartment: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every match of a search (and its ``_include``s), page by page."""
    matches: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = store.search(
            rtype,
            [*params, ("_count", str(_PAGE)), ("_offset", str(offset))],
            compartment_patient=compartment,
        )
        matches += page.resources
        included += page.included
        offset += len(page.resources)
        if not page.resources or offset >= page.total:
            return matches, included


def load_panel(
    store: FhirStore, *, pathway: str | None = None, control: str | None = None
) -> list[PanelRow]:
    """The whole panel, sorted; names are filled in only by :func:`name_page`."""
    plans, _ = search_all(store, "CarePlan", [("status", "active")])
    issues, _ = search_all(store, "DetectedIssue", [("status", "preliminary")])
    risks, _ = search_all(store, "RiskAssessment", [])
    return panel_rows(plans, (), issues, risks, pathway=pathway, control=control)


def name_page(store: FhirStore, rows: list[PanelRow]) -> list[PanelRow]:
    """Names of one page of the panel: one Patient search for the rows shown."""
    ids = [r.patient.split("/", 1)[1] for r in rows]
    if not ids:
        return rows
    found = store.search("Patient", [("_id", ",".join(ids)), ("_count", str(len(ids)))])
    return name_rows(rows, found.resources)
