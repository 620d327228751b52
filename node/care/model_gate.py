"""The risk-model gate (pure): may a model from the registry raise alerts here?

A model's scores reach a doctor as alerts only when its registry card shows a federated AUROC of
at least the node's floor over at least the node's minimum number of outcome events
(``care.model_min_auroc`` / ``care.model_min_events``, cited in ``node/settings.py``). Anything
else — a weak model, too few events to tell, a card that does not say, no card at all — is not
for clinical use: its RiskAssessments are still stored, labelled (:func:`label`) and never
alert. :func:`gate` is the one place that decides; it reads only the card it is given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODEL_SYSTEM",
    "NOT_FOR_CLINICAL_USE",
    "LABEL_SYSTEM",
    "ModelFloor",
    "GateVerdict",
    "gate",
    "model_of",
    "is_labelled",
    "label",
]

# RiskAssessment.method.coding.system of federated models (federated/scoring.py writes it; the
# two packages may not import each other, tests/care/test_care_model_gate.py checks they agree).
MODEL_SYSTEM = "https://ipjms.example.org/fhir/CodeSystem/federated-model"
LABEL_SYSTEM = "https://ipjms.example.org/fhir/CodeSystem/care-model-use"
NOT_FOR_CLINICAL_USE = "not-for-clinical-use"


@dataclass(frozen=True)
class ModelFloor:
    """The least a model's card must show (the node's ``care`` settings)."""

    min_auroc: float
    min_events: int


@dataclass(frozen=True)
class GateVerdict:
    model_id: str
    clinical_use: bool
    reason: str


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def gate(model_id: str, card: Mapping[str, Any] | None, floor: ModelFloor) -> GateVerdict:
    """``clinical_use`` and why, from the card's federated evaluation: ``evaluation.auroc`` and
    ``evaluation.events`` (outcome events the evaluation saw, summed over nodes)."""

    def no(reason: str) -> GateVerdict:
        return GateVerdict(model_id, False, f"not for clinical use: {reason}")

    if card is None:
        return no("no model card")
    evaluation = card.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return no("the card has no federated evaluation")
    auroc = _number(evaluation.get("auroc"))
    events = _number(evaluation.get("events"))
    if auroc is None:
        return no("the card reports no federated AUROC")
    if events is None:
        return no("the card reports no count of outcome events")
    if auroc < floor.min_auroc:
        return no(f"federated AUROC {auroc:.2f} is below the floor of {floor.min_auroc:.2f}")
    if events < floor.min_events:
        return no(f"{events:.0f} outcome events, fewer than the {floor.min_events} required")
    return GateVerdict(
        model_id,
        True,
        f"federated AUROC {auroc:.2f} ≥ {floor.min_auroc:.2f} over {events:.0f} outcome events "
        f"(≥ {floor.min_events})",
    )


def model_of(resource: Mapping[str, Any]) -> str | None:
    """The federated model a RiskAssessment comes from (``method.coding``), or None."""
    if resource.get("resourceType") != "RiskAssessment":
        return None
    for coding in (resource.get("method") or {}).get("coding", []):
        if coding.get("system") == MODEL_SYSTEM and coding.get("code"):
            return str(coding["code"])
    return None


def is_labelled(resource: Mapping[str, Any]) -> bool:
    return any(
        t.get("system") == LABEL_SYSTEM and t.get("code") == NOT_FOR_CLINICAL_USE
        for t in (resource.get("meta") or {}).get("tag", [])
    )


def label(resource: Mapping[str, Any], verdict: GateVerdict) -> dict[str, Any]:
    """A copy of the RiskAssessment tagged not for clinical use, the reason in a note."""
    out = copy.deepcopy(dict(resource))
    meta = out.setdefault("meta", {})
    meta["tag"] = [
        *[t for t in meta.get("tag", []) if t.get("system") != LABEL_SYSTEM],
        {"system": LABEL_SYSTEM, "code": NOT_FOR_CLINICAL_USE, "display": "Not for clinical use"},
    ]
    out["note"] = [*out.get("note", []), {"text": f"model {verdict.model_id}: {verdict.reason}"}]
    return out
