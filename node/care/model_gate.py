"""The risk-model gate (pure): may a model from the registry raise alerts here?

A model's scores reach a doctor as alerts only when its registry card meets this node's floor
(``care.model_min_auroc`` / ``care.model_min_events`` in ``node/settings.py``; by default the
region's, which a node may raise). The rule itself — federated AUROC ≥ the floor over ≥ the
floor's outcome events, anything the card does not say is a no — is
:func:`protos.alerting_floor.gate`, the one place it is written (the authority console shows the
same verdict against the region's default floor). A model gated out is not for clinical use: its
RiskAssessments are still stored, labelled (:func:`label`) and never alert.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from protos.alerting_floor import GateVerdict, ModelFloor, gate

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
