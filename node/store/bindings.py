"""FHIR R4 *required* terminology bindings of the stored resource types — the one table.

Pydantic (``fhir.resources``) checks structure and the ``code`` pattern but not value sets, so
``Observation.status = "bogus"`` would pass it. This module holds, for every type in
:data:`node.store.search_params.SUPPORTED_SEARCH_PARAMS`, the top-level ``code`` elements that the
FHIR R4 (4.0.1) specification binds with strength *required*, with the complete code list of the
bound value set, and the required-binding CodeableConcepts whose codes are checked per coding
system (``Condition.clinicalStatus`` …). Extensible, preferred and example bindings (e.g.
``Encounter.class``, ``Resource.language``) are deliberately absent: other codes are legal there.

Sources: which elements are bound *required* — the R4 StructureDefinitions as generated into
typed code fields (google/fhir ``proto/r4/core``, samply/golang-fhir-models); the code lists — the
R4 value set pages on hl7.org/fhir/R4 and their code systems (HAPI ``org.hl7.fhir.r4``). Value sets
that are a subset of their code system (``care-plan-intent``, ``immunization-status``,
``task-intent``, ``v3-ConfidentialityClassification``) list the subset, not the whole system.

:func:`binding_violations` is pure and cheap (a dict lookup per bound element); the write path
calls it from :func:`node.store.validation.validate_resource`, after structural validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ValueSet",
    "ConceptBinding",
    "Violation",
    "REQUIRED_CODE_BINDINGS",
    "REQUIRED_CONCEPT_BINDINGS",
    "binding_violations",
]

_VS = "http://hl7.org/fhir/ValueSet/"
_TERM = "http://terminology.hl7.org/CodeSystem/"


@dataclass(frozen=True)
class ValueSet:
    """A value set's canonical URL and its complete R4 code list (in the spec's order)."""

    url: str
    codes: tuple[str, ...]
    members: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.codes))

    def allowed(self) -> str:
        return ", ".join(self.codes)


@dataclass(frozen=True)
class ConceptBinding:
    """A required binding on a CodeableConcept: a coding in ``system`` must use a code of
    ``valueset``. Codings in other systems are left alone (a translation may ride along)."""

    system: str
    valueset: ValueSet


@dataclass(frozen=True)
class Violation:
    path: str
    message: str


def _codes(short: str) -> tuple[str, ...]:
    return tuple(code.strip() for code in short.split("|"))


def _vs(name: str, short: str) -> ValueSet:
    return ValueSet(_VS + name, _codes(short))


# --- value sets (FHIR R4 4.0.1), codes written as the spec's short form "a | b | c" ---------

OBSERVATION_STATUS = _vs(
    "observation-status",
    "registered | preliminary | final | amended | corrected | cancelled | entered-in-error | "
    "unknown",
)
DIAGNOSTIC_REPORT_STATUS = _vs(
    "diagnostic-report-status",
    "registered | partial | preliminary | final | amended | corrected | appended | cancelled | "
    "entered-in-error | unknown",
)
ENCOUNTER_STATUS = _vs(
    "encounter-status",
    "planned | arrived | triaged | in-progress | onleave | finished | cancelled | "
    "entered-in-error | unknown",
)
EPISODE_OF_CARE_STATUS = _vs(
    "episode-of-care-status",
    "planned | waitlist | active | onhold | finished | cancelled | entered-in-error",
)
EVENT_STATUS = _vs(
    "event-status",
    "preparation | in-progress | not-done | on-hold | stopped | completed | entered-in-error | "
    "unknown",
)
REQUEST_STATUS = _vs(
    "request-status",
    "draft | active | on-hold | revoked | completed | entered-in-error | unknown",
)
REQUEST_INTENT = _vs(
    "request-intent",
    "proposal | plan | directive | order | original-order | reflex-order | filler-order | "
    "instance-order | option",
)
CARE_PLAN_INTENT = _vs("care-plan-intent", "proposal | plan | order | option")
MEDICATION_REQUEST_INTENT = _vs(
    "medicationrequest-intent",
    "proposal | plan | order | original-order | reflex-order | filler-order | instance-order | "
    "option",
)
TASK_INTENT = _vs(
    "task-intent",
    "unknown | proposal | plan | order | original-order | reflex-order | filler-order | "
    "instance-order | option",
)
REQUEST_PRIORITY = _vs("request-priority", "routine | urgent | asap | stat")
IMMUNIZATION_STATUS = _vs("immunization-status", "completed | entered-in-error | not-done")
MEDICATION_STATUS = _vs("medication-status", "active | inactive | entered-in-error")
MEDICATION_REQUEST_STATUS = _vs(
    "medicationrequest-status",
    "active | on-hold | cancelled | completed | entered-in-error | stopped | draft | unknown",
)
MEDICATION_STATEMENT_STATUS = _vs(
    "medication-statement-status",
    "active | completed | entered-in-error | intended | stopped | on-hold | unknown | not-taken",
)
MEDICATION_ADMIN_STATUS = _vs(
    "medication-admin-status",
    "in-progress | not-done | on-hold | completed | entered-in-error | stopped | unknown",
)
TASK_STATUS = _vs(
    "task-status",
    "draft | requested | received | accepted | rejected | ready | cancelled | in-progress | "
    "on-hold | failed | completed | entered-in-error",
)
APPOINTMENT_STATUS = _vs(
    "appointmentstatus",
    "proposed | pending | booked | arrived | fulfilled | cancelled | noshow | entered-in-error | "
    "checked-in | waitlist",
)
BUNDLE_TYPE = _vs(
    "bundle-type",
    "document | message | transaction | transaction-response | batch | batch-response | history | "
    "searchset | collection",
)
CARE_TEAM_STATUS = _vs(
    "care-team-status",
    "proposed | active | suspended | inactive | entered-in-error",
)
FINANCIAL_STATUS = _vs("fm-status", "active | cancelled | draft | entered-in-error")
EOB_STATUS = _vs("explanationofbenefit-status", "active | cancelled | draft | entered-in-error")
CLAIM_USE = _vs("claim-use", "claim | preauthorization | predetermination")
REMITTANCE_OUTCOME = _vs("remittance-outcome", "queued | complete | error | partial")
COMPOSITION_STATUS = _vs("composition-status", "preliminary | final | amended | entered-in-error")
CONFIDENTIALITY_CLASSIFICATION = ValueSet(
    "http://terminology.hl7.org/ValueSet/v3-ConfidentialityClassification",
    _codes("U | L | M | N | R | V"),
)
CONSENT_STATE = _vs(
    "consent-state-codes",
    "draft | proposed | active | rejected | inactive | entered-in-error",
)
DEVICE_STATUS = _vs("device-status", "active | inactive | entered-in-error | unknown")
DOCUMENT_REFERENCE_STATUS = _vs(
    "document-reference-status",
    "current | superseded | entered-in-error",
)
FAMILY_HISTORY_STATUS = _vs(
    "history-status",
    "partial | completed | entered-in-error | health-unknown",
)
FLAG_STATUS = _vs("flag-status", "active | inactive | entered-in-error")
GOAL_LIFECYCLE_STATUS = _vs(
    "goal-status",
    "proposed | planned | accepted | active | on-hold | completed | cancelled | "
    "entered-in-error | rejected",
)
IMAGING_STUDY_STATUS = _vs(
    "imagingstudy-status",
    "registered | available | cancelled | entered-in-error | unknown",
)
LIST_STATUS = _vs("list-status", "current | retired | entered-in-error")
LIST_MODE = _vs("list-mode", "working | snapshot | changes")
LOCATION_STATUS = _vs("location-status", "active | suspended | inactive")
LOCATION_MODE = _vs("location-mode", "instance | kind")
ADMINISTRATIVE_GENDER = _vs("administrative-gender", "male | female | other | unknown")
QUESTIONNAIRE_RESPONSE_STATUS = _vs(
    "questionnaire-answers-status",
    "in-progress | completed | amended | entered-in-error | stopped",
)
SPECIMEN_STATUS = _vs(
    "specimen-status",
    "available | unavailable | unsatisfactory | entered-in-error",
)
SUPPLY_DELIVERY_STATUS = _vs(
    "supplydelivery-status",
    "in-progress | completed | abandoned | entered-in-error",
)
PUBLICATION_STATUS = _vs("publication-status", "draft | active | retired | unknown")
ALLERGY_TYPE = _vs("allergy-intolerance-type", "allergy | intolerance")
ALLERGY_CATEGORY = _vs("allergy-intolerance-category", "food | medication | environment | biologic")
ALLERGY_CRITICALITY = _vs("allergy-intolerance-criticality", "low | high | unable-to-assess")
CONDITION_CLINICAL = _vs(
    "condition-clinical",
    "active | recurrence | relapse | inactive | remission | resolved",
)
CONDITION_VERIFICATION = _vs(
    "condition-ver-status",
    "unconfirmed | provisional | differential | confirmed | refuted | entered-in-error",
)
ALLERGY_CLINICAL = _vs("allergyintolerance-clinical", "active | inactive | resolved")
ALLERGY_VERIFICATION = _vs(
    "allergyintolerance-verification",
    "unconfirmed | confirmed | refuted | entered-in-error",
)

# --- the tables --------------------------------------------------------------------------------

# resource type -> top-level element of type `code` (or list of `code`) -> required value set.
# Types the store keeps that have no such element (Basic, Condition, Organization,
# PractitionerRole, Provenance: only `language`, a preferred binding) are absent.
REQUIRED_CODE_BINDINGS: Mapping[str, Mapping[str, ValueSet]] = {
    "AllergyIntolerance": {
        "type": ALLERGY_TYPE,
        "category": ALLERGY_CATEGORY,
        "criticality": ALLERGY_CRITICALITY,
    },
    "Appointment": {"status": APPOINTMENT_STATUS},
    "Bundle": {"type": BUNDLE_TYPE},
    "CarePlan": {"status": REQUEST_STATUS, "intent": CARE_PLAN_INTENT},
    "CareTeam": {"status": CARE_TEAM_STATUS},
    "Claim": {"status": FINANCIAL_STATUS, "use": CLAIM_USE},
    "Communication": {"status": EVENT_STATUS, "priority": REQUEST_PRIORITY},
    "Composition": {
        "status": COMPOSITION_STATUS,
        "confidentiality": CONFIDENTIALITY_CLASSIFICATION,
    },
    "Consent": {"status": CONSENT_STATE},
    "Coverage": {"status": FINANCIAL_STATUS},
    "Device": {"status": DEVICE_STATUS},
    "DiagnosticReport": {"status": DIAGNOSTIC_REPORT_STATUS},
    "DocumentReference": {"status": DOCUMENT_REFERENCE_STATUS, "docStatus": COMPOSITION_STATUS},
    "Encounter": {"status": ENCOUNTER_STATUS},
    "EpisodeOfCare": {"status": EPISODE_OF_CARE_STATUS},
    "ExplanationOfBenefit": {
        "status": EOB_STATUS,
        "use": CLAIM_USE,
        "outcome": REMITTANCE_OUTCOME,
    },
    "FamilyMemberHistory": {"status": FAMILY_HISTORY_STATUS},
    "Flag": {"status": FLAG_STATUS},
    "Goal": {"lifecycleStatus": GOAL_LIFECYCLE_STATUS},
    "ImagingStudy": {"status": IMAGING_STUDY_STATUS},
    "Immunization": {"status": IMMUNIZATION_STATUS},
    "List": {"status": LIST_STATUS, "mode": LIST_MODE},
    "Location": {"status": LOCATION_STATUS, "mode": LOCATION_MODE},
    "Medication": {"status": MEDICATION_STATUS},
    "MedicationAdministration": {"status": MEDICATION_ADMIN_STATUS},
    "MedicationRequest": {
        "status": MEDICATION_REQUEST_STATUS,
        "intent": MEDICATION_REQUEST_INTENT,
        "priority": REQUEST_PRIORITY,
    },
    "MedicationStatement": {"status": MEDICATION_STATEMENT_STATUS},
    "NutritionOrder": {"status": REQUEST_STATUS, "intent": REQUEST_INTENT},
    "Observation": {"status": OBSERVATION_STATUS},
    "Patient": {"gender": ADMINISTRATIVE_GENDER},
    "Practitioner": {"gender": ADMINISTRATIVE_GENDER},
    "Procedure": {"status": EVENT_STATUS},
    "QuestionnaireResponse": {"status": QUESTIONNAIRE_RESPONSE_STATUS},
    "RiskAssessment": {"status": OBSERVATION_STATUS},
    "DetectedIssue": {"status": OBSERVATION_STATUS},
    "ServiceRequest": {
        "status": REQUEST_STATUS,
        "intent": REQUEST_INTENT,
        "priority": REQUEST_PRIORITY,
    },
    "Specimen": {"status": SPECIMEN_STATUS},
    "SupplyDelivery": {"status": SUPPLY_DELIVERY_STATUS},
    "ValueSet": {"status": PUBLICATION_STATUS},
    "Task": {"status": TASK_STATUS, "intent": TASK_INTENT, "priority": REQUEST_PRIORITY},
}

# resource type -> top-level CodeableConcept element -> required binding, checked per coding.
REQUIRED_CONCEPT_BINDINGS: Mapping[str, Mapping[str, ConceptBinding]] = {
    "Condition": {
        "clinicalStatus": ConceptBinding(_TERM + "condition-clinical", CONDITION_CLINICAL),
        "verificationStatus": ConceptBinding(
            _TERM + "condition-ver-status", CONDITION_VERIFICATION
        ),
    },
    "AllergyIntolerance": {
        "clinicalStatus": ConceptBinding(_TERM + "allergyintolerance-clinical", ALLERGY_CLINICAL),
        "verificationStatus": ConceptBinding(
            _TERM + "allergyintolerance-verification", ALLERGY_VERIFICATION
        ),
    },
}

_NO_CODES: Mapping[str, ValueSet] = {}
_NO_CONCEPTS: Mapping[str, ConceptBinding] = {}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refused(path: str, value: Any, vs: ValueSet) -> Violation:
    return Violation(
        path,
        f"{path}: {_shown(value)} is not in the required value set {vs.url} "
        f"(allowed: {vs.allowed()})",
    )


def binding_violations(rtype: str, resource: Mapping[str, Any]) -> list[Violation]:
    """Every top-level required-binding violation in ``resource`` (already structurally valid).

    A missing element is not a violation here (cardinality and types are pydantic's job); a
    code-typed element given only through its ``_element`` extension carries no code to check."""
    out: list[Violation] = []
    for name, vs in REQUIRED_CODE_BINDINGS.get(rtype, _NO_CODES).items():
        value = resource.get(name)
        if value is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str) and item not in vs.members:
                    out.append(_refused(f"{rtype}.{name}[{i}]", item, vs))
        elif isinstance(value, str) and value not in vs.members:
            out.append(_refused(f"{rtype}.{name}", value, vs))
    for name, rule in REQUIRED_CONCEPT_BINDINGS.get(rtype, _NO_CONCEPTS).items():
        concept = resource.get(name)
        if not isinstance(concept, dict):
            continue
        for i, coding in enumerate(concept.get("coding") or ()):
            if not isinstance(coding, dict) or coding.get("system") != rule.system:
                continue
            code = coding.get("code")
            if isinstance(code, str) and code not in rule.valueset.members:
                out.append(_refused(f"{rtype}.{name}.coding[{i}].code", code, rule.valueset))
    return out
