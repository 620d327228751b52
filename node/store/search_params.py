"""The search parameters the store supports, per resource type — the one table.

Index extraction (:mod:`node.store.search_index`), query compilation
(:mod:`node.store.search_query`) and the CapabilityStatement all read this table, so a parameter
is either fully supported or absent. Paths are plain dotted element paths into the resource JSON;
choice types (``effective[x]``) are listed per concrete type (``effectiveDateTime``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SearchParamDef",
    "SUPPORTED_SEARCH_PARAMS",
    "COMMON_SEARCH_PARAMS",
    "RESULT_PARAMS",
    "SHARED_TYPES",
    "params_for",
    "composite_key",
    "TEXT_SUFFIX",
]

Kind = Literal["token", "string", "date", "reference", "quantity", "special", "composite"]

# Token parameters also index the text of their codes (CodeableConcept.text, Coding.display) as
# string rows named ``<param>:text``: what the ``:text`` modifier searches.
TEXT_SUFFIX = ":text"


@dataclass(frozen=True)
class SearchParamDef:
    name: str
    kind: Kind
    paths: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # reference params: allowed target types (empty = any)
    description: str = ""
    # composite params: the two component parameters (``code$value``). ``paths`` set: the pair is
    # correlated inside each element at that path (e.g. one Observation.component), indexed as
    # quantity rows under :func:`composite_key`; no paths: the pair is the resource's own (one
    # code and one value per Observation), so the search is the AND of the two parameters.
    components: tuple[str, ...] = ()


def _tok(name: str, *paths: str) -> SearchParamDef:
    return SearchParamDef(name, "token", paths)


def _str(name: str, *paths: str) -> SearchParamDef:
    return SearchParamDef(name, "string", paths)


def _date(name: str, *paths: str) -> SearchParamDef:
    return SearchParamDef(name, "date", paths)


def _ref(name: str, *paths: str, targets: tuple[str, ...] = ()) -> SearchParamDef:
    return SearchParamDef(name, "reference", paths, targets)


def _qty(name: str, *paths: str) -> SearchParamDef:
    return SearchParamDef(name, "quantity", paths)


def _composite(name: str, *components: str, path: str = "") -> SearchParamDef:
    doc = f"{components[0]}${components[1]}" + (f" within one {path}" if path else "")
    return SearchParamDef(name, "composite", (path,) if path else (), (), doc, components)


def composite_key(name: str, system: str | None, code: str) -> str:
    """The index param of a correlated composite's rows for one code: ``system`` None = any
    system (rows are written under both keys). Hashed: the param column is short."""
    import hashlib

    digest = hashlib.sha256(f"{'*' if system is None else system}|{code}".encode()).hexdigest()
    return f"{name}#{digest[:24]}"


def _patient(*paths: str) -> SearchParamDef:
    return _ref("patient", *paths, targets=("Patient",))


# Parameters every type supports; `_id` and `_lastUpdated` read the resource row itself.
COMMON_SEARCH_PARAMS: dict[str, SearchParamDef] = {
    "_id": SearchParamDef("_id", "special", description="logical id"),
    "_lastUpdated": SearchParamDef("_lastUpdated", "special", description="meta.lastUpdated"),
    "_tag": _tok("_tag", "meta.tag"),
}

# Result-control parameters (not filters).
RESULT_PARAMS = frozenset({"_count", "_offset", "_sort", "_include", "_total", "_format"})

# Types in no patient compartment but referenced from it ($everything includes them).
SHARED_TYPES = frozenset(
    {"Organization", "Practitioner", "PractitionerRole", "Location", "Medication"}
)

_I = _tok("identifier", "identifier")
_SUBJ = _ref("subject", "subject")
_PAT_SUBJ = _patient("subject")
_ENC = _ref("encounter", "encounter", targets=("Encounter",))
_STATUS = _tok("status", "status")
_CAT = _tok("category", "category")
_CODE = _tok("code", "code")

_TYPES: dict[str, list[SearchParamDef]] = {
    "Patient": [
        _I,
        _str("name", "name"),
        _str("family", "name.family"),
        _str("given", "name.given"),
        _date("birthdate", "birthDate"),
        _tok("gender", "gender"),
        _tok("active", "active"),
        _str("address", "address"),
        _str("address-city", "address.city"),
        _tok("telecom", "telecom"),
        _ref("general-practitioner", "generalPractitioner"),
        _ref("organization", "managingOrganization", targets=("Organization",)),
        _ref("link", "link.other", targets=("Patient",)),
    ],
    "Encounter": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _tok("class", "class"),
        _tok("type", "type"),
        _date("date", "period"),
        _ref("participant", "participant.individual"),
        _ref("practitioner", "participant.individual", targets=("Practitioner",)),
        _ref("service-provider", "serviceProvider", targets=("Organization",)),
        _ref("location", "location.location", targets=("Location",)),
        _tok("reason-code", "reasonCode"),
        _ref("episode-of-care", "episodeOfCare", targets=("EpisodeOfCare",)),
        _ref("based-on", "basedOn"),
    ],
    "Condition": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _CODE,
        _CAT,
        _tok("clinical-status", "clinicalStatus"),
        _tok("verification-status", "verificationStatus"),
        _date("onset-date", "onsetDateTime", "onsetPeriod"),
        _date("abatement-date", "abatementDateTime", "abatementPeriod"),
        _date("recorded-date", "recordedDate"),
        _ref("asserter", "asserter"),
    ],
    "Observation": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _CODE,
        _CAT,
        _STATUS,
        _date("date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _qty("value-quantity", "valueQuantity"),
        _tok("value-concept", "valueCodeableConcept"),
        _tok("component-code", "component.code"),
        _qty("component-value-quantity", "component.valueQuantity"),
        _composite("code-value-quantity", "code", "value-quantity"),
        _composite("code-value-concept", "code", "value-concept"),
        _composite(
            "component-code-value-quantity",
            "component-code",
            "component-value-quantity",
            path="component",
        ),
        _ref("performer", "performer"),
        _ref("based-on", "basedOn"),
        _ref("has-member", "hasMember"),
        _ref("derived-from", "derivedFrom"),
    ],
    "MedicationRequest": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CAT,
        _tok("intent", "intent"),
        _tok("code", "medicationCodeableConcept"),
        _ref("medication", "medicationReference", targets=("Medication",)),
        _date("authoredon", "authoredOn"),
        _ref("requester", "requester"),
        _ref("intended-performer", "performer"),
    ],
    "MedicationStatement": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _CAT,
        _tok("code", "medicationCodeableConcept"),
        _ref("medication", "medicationReference", targets=("Medication",)),
        _date("effective", "effectiveDateTime", "effectivePeriod"),
        _ref("context", "context"),
        _ref("source", "informationSource"),
    ],
    "MedicationAdministration": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _tok("code", "medicationCodeableConcept"),
        _ref("medication", "medicationReference", targets=("Medication",)),
        _date("effective-time", "effectiveDateTime", "effectivePeriod"),
        _ref("context", "context"),
        _ref("request", "request", targets=("MedicationRequest",)),
    ],
    "Medication": [_I, _CODE, _STATUS, _ref("manufacturer", "manufacturer")],
    "Procedure": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _CODE,
        _CAT,
        _STATUS,
        _date("date", "performedDateTime", "performedPeriod"),
        _ref("performer", "performer.actor"),
        _ref("location", "location", targets=("Location",)),
        _tok("reason-code", "reasonCode"),
    ],
    "Immunization": [
        _I,
        _patient("patient"),
        _STATUS,
        _date("date", "occurrenceDateTime"),
        _tok("vaccine-code", "vaccineCode"),
        _ref("location", "location", targets=("Location",)),
        _ref("performer", "performer.actor"),
        _ref("encounter", "encounter", targets=("Encounter",)),
    ],
    "DiagnosticReport": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _CODE,
        _CAT,
        _STATUS,
        _date("date", "effectiveDateTime", "effectivePeriod"),
        _date("issued", "issued"),
        _ref("result", "result", targets=("Observation",)),
        _ref("performer", "performer"),
        _ref("based-on", "basedOn"),
    ],
    "CarePlan": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CAT,
        _tok("intent", "intent"),
        _date("date", "period"),
        _ref("care-team", "careTeam", targets=("CareTeam",)),
        _ref("goal", "goal", targets=("Goal",)),
        _ref("based-on", "basedOn"),
        _tok("activity-code", "activity.detail.code"),
    ],
    "CareTeam": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CAT,
        _date("date", "period"),
        _ref("participant", "participant.member"),
    ],
    "Claim": [
        _I,
        _patient("patient"),
        _STATUS,
        _tok("use", "use"),
        _date("created", "created"),
        _ref("provider", "provider"),
        _ref("insurer", "insurer", targets=("Organization",)),
        _ref("encounter", "item.encounter", targets=("Encounter",)),
        _ref("facility", "facility", targets=("Location",)),
    ],
    "ExplanationOfBenefit": [
        _I,
        _patient("patient"),
        _STATUS,
        _date("created", "created"),
        _ref("provider", "provider"),
        _ref("claim", "claim", targets=("Claim",)),
        _ref("encounter", "item.encounter", targets=("Encounter",)),
        _ref("care-team", "careTeam.provider"),
        _ref("facility", "facility", targets=("Location",)),
    ],
    "Coverage": [
        _I,
        _patient("beneficiary"),
        _ref("beneficiary", "beneficiary", targets=("Patient",)),
        _ref("payor", "payor"),
        _STATUS,
        _tok("type", "type"),
    ],
    "AllergyIntolerance": [
        _I,
        _patient("patient"),
        _tok("clinical-status", "clinicalStatus"),
        _tok("verification-status", "verificationStatus"),
        _tok("code", "code", "reaction.substance"),
        _tok("category", "category"),
        _tok("type", "type"),
        _tok("criticality", "criticality"),
        _date("date", "recordedDate"),
        _ref("recorder", "recorder"),
        _ref("asserter", "asserter"),
    ],
    "Organization": [
        _I,
        _str("name", "name", "alias"),
        _tok("type", "type"),
        _tok("active", "active"),
        _str("address", "address"),
        _ref("partof", "partOf", targets=("Organization",)),
    ],
    "Practitioner": [
        _I,
        _str("name", "name"),
        _str("family", "name.family"),
        _str("given", "name.given"),
        _tok("gender", "gender"),
        _tok("active", "active"),
        _str("address", "address"),
    ],
    "PractitionerRole": [
        _I,
        _ref("practitioner", "practitioner", targets=("Practitioner",)),
        _ref("organization", "organization", targets=("Organization",)),
        _ref("location", "location", targets=("Location",)),
        _tok("role", "code"),
        _tok("specialty", "specialty"),
        _tok("active", "active"),
    ],
    "Location": [
        _I,
        _str("name", "name", "alias"),
        _str("address", "address"),
        _STATUS,
        _tok("type", "type"),
        _ref("organization", "managingOrganization", targets=("Organization",)),
        _ref("partof", "partOf", targets=("Location",)),
    ],
    "Device": [
        _I,
        _patient("patient"),
        _tok("type", "type"),
        _STATUS,
        _ref("organization", "owner", targets=("Organization",)),
        _ref("location", "location", targets=("Location",)),
    ],
    "ImagingStudy": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _date("started", "started"),
        _tok("modality", "series.modality"),
        _tok("bodysite", "series.bodySite"),
        _ref("basedon", "basedOn"),
    ],
    "DocumentReference": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _tok("type", "type"),
        _CAT,
        _date("date", "date"),
        _date("period", "context.period"),
        _ref("encounter", "context.encounter", targets=("Encounter",)),
        _ref("author", "author"),
        _ref("custodian", "custodian", targets=("Organization",)),
    ],
    "Provenance": [
        _ref("target", "target"),
        _patient("target"),
        _ref("agent", "agent.who"),
        _date("recorded", "recorded"),
        _ref("location", "location", targets=("Location",)),
    ],
    "SupplyDelivery": [
        _I,
        _patient("patient"),
        _STATUS,
        _ref("supplier", "supplier"),
        _ref("receiver", "receiver"),
    ],
    "Composition": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _tok("type", "type"),
        _CAT,
        _date("date", "date"),
        _ref("author", "author"),
        _str("title", "title"),
    ],
    "Bundle": [
        _tok("identifier", "identifier"),
        _tok("type", "type"),
        _date("timestamp", "timestamp"),
    ],
    "ServiceRequest": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CAT,
        _CODE,
        _tok("intent", "intent"),
        _tok("priority", "priority"),
        _date("authored", "authoredOn"),
        _ref("requester", "requester"),
        _ref("performer", "performer"),
        _ref("based-on", "basedOn"),
    ],
    "Task": [
        _I,
        _patient("for"),
        _ref("subject", "for"),
        _ENC,
        _STATUS,
        _CODE,
        _tok("intent", "intent"),
        _tok("priority", "priority"),
        _tok("business-status", "businessStatus"),
        _date("authored-on", "authoredOn"),
        _date("modified", "lastModified"),
        _ref("owner", "owner"),
        _ref("requester", "requester"),
        _ref("focus", "focus"),
        _ref("based-on", "basedOn"),
        _ref("part-of", "partOf", targets=("Task",)),
    ],
    "Communication": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CAT,
        _date("sent", "sent"),
        _date("received", "received"),
        _ref("recipient", "recipient"),
        _ref("sender", "sender"),
        _ref("based-on", "basedOn"),
        _ref("part-of", "partOf"),
    ],
    "Consent": [
        _I,
        _patient("patient"),
        _STATUS,
        _tok("scope", "scope"),
        _CAT,
        _date("date", "dateTime"),
        _date("period", "provision.period"),
        _tok("action", "provision.action"),
        _ref("actor", "provision.actor.reference"),
        _tok("purpose", "provision.purpose"),
        _ref("organization", "organization", targets=("Organization",)),
    ],
    "RiskAssessment": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _tok("method", "method"),
        _date("date", "occurrenceDateTime", "occurrencePeriod"),
        _ref("condition", "condition", targets=("Condition",)),
        _ref("performer", "performer"),
    ],
    "Goal": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _tok("lifecycle-status", "lifecycleStatus"),
        _tok("achievement-status", "achievementStatus"),
        _CAT,
        _date("start-date", "startDate"),
        _date("target-date", "target.dueDate"),
    ],
    "EpisodeOfCare": [
        _I,
        _patient("patient"),
        _STATUS,
        _tok("type", "type"),
        _date("date", "period"),
        _ref("organization", "managingOrganization", targets=("Organization",)),
        _ref("care-manager", "careManager"),
    ],
    "Appointment": [
        _I,
        _patient("participant.actor"),
        _ref("actor", "participant.actor"),
        _STATUS,
        _date("date", "start"),
        _tok("service-type", "serviceType"),
        _ref("based-on", "basedOn"),
        _ref("slot", "slot"),
    ],
    # Cohorts: Group-level Bulk $export (node/api/bulk_routes.py) exports its Patient members.
    "Group": [
        _I,
        _tok("type", "type"),
        _tok("actual", "actual"),
        _CODE,
        _str("name", "name"),
        _ref("member", "member.entity"),
    ],
    # A clinic's published availability (node/patient/booking.py books its Slots).
    "Schedule": [_I, _ref("actor", "actor"), _tok("active", "active")],
    "Slot": [
        _I,
        _ref("schedule", "schedule"),
        _STATUS,
        _date("start", "start"),
        _tok("service-type", "serviceType"),
    ],
    "Flag": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _CAT,
        _date("date", "period"),
        _ref("author", "author"),
    ],
    "Specimen": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _STATUS,
        _tok("type", "type"),
        _date("collected", "collection.collectedDateTime", "collection.collectedPeriod"),
    ],
    "QuestionnaireResponse": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _date("authored", "authored"),
        _ref("author", "author"),
    ],
    "FamilyMemberHistory": [
        _I,
        _patient("patient"),
        _STATUS,
        _tok("code", "condition.code"),
        _tok("relationship", "relationship"),
        _date("date", "date"),
    ],
    "List": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _ENC,
        _STATUS,
        _CODE,
        _date("date", "date"),
    ],
    "NutritionOrder": [
        _I,
        _patient("patient"),
        _ENC,
        _STATUS,
        _date("datetime", "dateTime"),
    ],
    "Basic": [
        _I,
        _PAT_SUBJ,
        _SUBJ,
        _CODE,
        _date("created", "created"),
    ],
    # Care management (node/care): alerts, and the pathways loaded into the store.
    "DetectedIssue": [
        _I,
        _patient("patient"),
        _CODE,
        _STATUS,  # not an R4 search parameter; open alerts are status=preliminary
        _date("identified", "identifiedDateTime"),
        _ref("implicated", "implicated"),
        _ref("author", "author"),
    ],
    "PlanDefinition": [
        _I,
        _STATUS,
        _tok("url", "url"),
        _tok("version", "version"),
        _str("name", "name"),
    ],
    "ActivityDefinition": [
        _I,
        _STATUS,
        _tok("url", "url"),
        _tok("version", "version"),
        _str("name", "name"),
    ],
    # Terminology the node holds: what the token modifiers :in / :not-in expand
    # (node/store/value_sets.py).
    "ValueSet": [
        _I,
        _STATUS,
        _tok("url", "url"),
        _tok("version", "version"),
        _str("name", "name"),
    ],
}

SUPPORTED_SEARCH_PARAMS: dict[str, dict[str, SearchParamDef]] = {
    rtype: {**COMMON_SEARCH_PARAMS, **{p.name: p for p in defs}} for rtype, defs in _TYPES.items()
}


def params_for(rtype: str) -> dict[str, SearchParamDef]:
    """The supported parameters of ``rtype`` (KeyError for an unsupported type)."""
    return SUPPORTED_SEARCH_PARAMS[rtype]
