"""Score a node's patients with a published model and store FHIR ``RiskAssessment``s there.

Runs at (or on behalf of) the node: reads the node's own store over its API as a backend
client, computes each patient's features at their latest discharge with the model's feature
spec, and writes one RiskAssessment per (model, discharge) — idempotently, keyed by an
identifier — with the probability, the model id as ``method`` and the discharge as ``basis``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from federated.feature_spec import FEATURE_NAMES, SPEC_ID, Sample, extract_samples

__all__ = [
    "ScoreSummary",
    "risk_assessment",
    "store_assessment",
    "score_node",
    "MODEL_SYSTEM",
    "ASSESSMENT_ID_SYSTEM",
]

MODEL_SYSTEM = "https://ipjms.example.org/fhir/CodeSystem/federated-model"
ASSESSMENT_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/risk-assessment"
OUTCOME_TEXT = "Inpatient readmission within 30 days of discharge"


@dataclass
class ScoreSummary:
    model_id: str
    scored: int = 0
    stored: int = 0
    risks: list[tuple[str, str | None, float]] = field(
        default_factory=list
    )  # (patient id, pseudonym, p)

    def top(self, n: int) -> list[tuple[str, str | None, float]]:
        return sorted(self.risks, key=lambda r: -r[2])[:n]


def risk_assessment(
    patient_id: str, sample: Sample, probability: float, model_id: str, task: str
) -> dict[str, Any]:
    return {
        "resourceType": "RiskAssessment",
        "identifier": [
            {"system": ASSESSMENT_ID_SYSTEM, "value": f"{model_id}/{sample.encounter_id}"}
        ],
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{sample.encounter_id}"},
        "occurrenceDateTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "method": {
            "coding": [
                {"system": MODEL_SYSTEM, "code": model_id, "display": f"federated {task} model"}
            ],
            "text": model_id,
        },
        "basis": [
            {
                "reference": f"Encounter/{sample.encounter_id}",
                "display": f"features per {SPEC_ID} at this discharge",
            }
        ],
        "prediction": [
            {"outcome": {"text": OUTCOME_TEXT}, "probabilityDecimal": round(float(probability), 4)}
        ],
        "note": [{"text": f"feature spec {SPEC_ID}; model {model_id}"}],
    }


def store_assessment(
    http: httpx.Client, node_url: str, token: str, resource: dict[str, Any], key: str
) -> int:
    """Store one RiskAssessment through the node's FHIR API (so it passes the node's one write
    door like any client's write, its commit event naming this backend client), once: a
    conditional create on its identifier ``key``. Returns 201 (stored) or 200 (already there)."""
    r = http.post(
        f"{node_url.rstrip('/')}/fhir/RiskAssessment",
        json=resource,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "If-None-Exist": f"identifier={ASSESSMENT_ID_SYSTEM}|{key}",
        },
    )
    if r.status_code not in (200, 201):
        raise RuntimeError(f"storing RiskAssessment answered {r.status_code}: {r.text[:300]}")
    return r.status_code


def score_node(
    *,
    node_url: str,
    model_id: str,
    registry_url: str,
    org_dir: Path,
    client_id: str,
    client_key: Path,
    scope: str = "system/*.rs system/RiskAssessment.c",
    linkage_key: bytes | None = None,
    pseudonym_url: str | None = None,
    state_dir: Path | None = None,
    as_of: datetime | None = None,
) -> ScoreSummary:
    from federated.cohort import BackendTokenSource, FhirCohortReader, national_id_with_system
    from federated.models import make_model, predict_proba, set_arrays
    from federated.registry_client import RegistryClient
    from trust.pki import load_org
    from trust.pseudonymiser import LinkageKeyPseudonymiser, Pseudonymiser

    creds = load_org(org_dir)
    pseudonymiser: Pseudonymiser | None = None  # patients by regional pseudonym, when asked
    if pseudonym_url:
        from federated.pseudonyms import node_pseudonymiser

        # the SuperNode's client rule (the regional CA only); the answers kept in state_dir
        pseudonymiser = node_pseudonymiser(creds, pseudonym_url=pseudonym_url, state_dir=state_dir)
    elif linkage_key:
        pseudonymiser = LinkageKeyPseudonymiser(linkage_key)
    registry = RegistryClient(registry_url, creds)
    try:
        card = registry.card(model_id)
        weights = registry.weights(model_id)
    finally:
        registry.close()
    if card.get("feature_spec") != SPEC_ID:
        raise ValueError(
            f"model {model_id} uses {card.get('feature_spec')}, this node computes {SPEC_ID}"
        )
    model = make_model(str(card.get("model", "logreg")), len(FEATURE_NAMES))
    set_arrays(model, weights)
    tokens = BackendTokenSource(node_url, client_id, client_key, scope)
    reader = FhirCohortReader(node_url, tokens)
    summary = ScoreSummary(model_id)
    try:
        for patient in reader.patients():
            pid = str(patient.get("id"))
            samples = extract_samples(
                [patient, *reader.everything(pid)], as_of=as_of, include_unlabelled=True
            )
            if not samples:
                continue
            latest = max(samples, key=lambda s: s.discharge)
            p = float(predict_proba(model, np.array([latest.features], dtype=np.float32))[0])
            summary.scored += 1
            nid = national_id_with_system(patient)
            pseudo = pseudonymiser.regional([nid])[0] if (pseudonymiser and nid) else None
            summary.risks.append((pid, pseudo, p))
            resource = risk_assessment(pid, latest, p, model_id, str(card.get("task", "")))
            token = reader._token or tokens.token(reader.http)
            reader._token = token
            key = f"{model_id}/{latest.encounter_id}"
            store_assessment(reader.http, reader.base_url, token, resource, key)
            summary.stored += 1
    except httpx.HTTPError as exc:
        raise RuntimeError(f"node API unreachable: {exc}") from None
    finally:
        reader.close()
    return summary
