"""Builders for the FHIR R4 ``AuditEvent`` records the ledgers hold (shaped after IHE BALP).

One builder per thing the security model says must be audited: a disclosure, a consent change,
a break-glass access, a login failure, a training run, and a routing (authorization) decision.
Patients appear only by pseudonym (``entity`` with role Patient, identifier system
:data:`PSEUDONYM_SYSTEM`); organisations by id (:data:`ORG_SYSTEM`). Pass the same pseudonym as
``patient_pseudonym=`` to :meth:`trust.audit_ledger.AuditLedger.append` so the patient's
disclosure list can find the entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

__all__ = [
    "PSEUDONYM_SYSTEM",
    "ORG_SYSTEM",
    "ENVELOPE_SYSTEM",
    "USER_SYSTEM",
    "RUN_SYSTEM",
    "disclosure",
    "consent_change",
    "break_glass",
    "login_failure",
    "training_run",
    "routing_decision",
    "oprf_evaluation",
    "patient_pseudonym_of",
]

PSEUDONYM_SYSTEM = "urn:ipjms:patient-pseudonym"
ORG_SYSTEM = "urn:ipjms:org"
ENVELOPE_SYSTEM = "urn:ipjms:envelope"
USER_SYSTEM = "urn:ipjms:user"
RUN_SYSTEM = "urn:ipjms:training-run"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
AUTHZ_SUBTYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
REST = "http://hl7.org/fhir/restful-interaction"
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


def _now(recorded: dt.datetime | None) -> str:
    value = recorded or dt.datetime.now(dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def _org(org_id: str) -> dict[str, Any]:
    return {"identifier": {"system": ORG_SYSTEM, "value": org_id}, "display": org_id}


def _agent(
    who: dict[str, Any], type_coding: dict[str, Any], *, requestor: bool, **extra: Any
) -> dict[str, Any]:
    return {"type": {"coding": [type_coding]}, "who": who, "requestor": requestor, **extra}


def _user(org_id: str, user: str) -> dict[str, Any]:
    return {"identifier": {"system": f"{USER_SYSTEM}:{org_id}", "value": user}}


def _patient(pseudonym: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonym}},
        "type": _coding(ENTITY_TYPE, "1", "Person"),
        "role": _coding(OBJECT_ROLE, "1", "Patient"),
    }


def _object(system: str, value: str, *, detail: list[dict[str, Any]] | None = None) -> dict:  # type: ignore[type-arg]
    entity: dict[str, Any] = {
        "what": {"identifier": {"system": system, "value": value}},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
    }
    if detail:
        entity["detail"] = detail
    return entity


def _classes_detail(classes: Sequence[str]) -> dict[str, str]:
    return {"type": "data-classes", "valueString": " ".join(classes) or "-"}


def _base(
    profile: str | None,
    type_coding: dict[str, Any],
    action: str,
    observer: str,
    source_type: str,
    *,
    outcome: str = SUCCESS,
    recorded: dt.datetime | None = None,
    subtype: list[dict[str, Any]] | None = None,
    purpose: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": type_coding,
        "action": action,
        "recorded": _now(recorded),
        "outcome": outcome,
        "agent": [],
        "source": {"observer": _org(observer), "type": [_coding(SOURCE_TYPE, source_type)]},
        "entity": [],
    }
    if profile:
        event["meta"] = {"profile": [BALP + profile]}
    if subtype:
        event["subtype"] = subtype
    if purpose:
        event["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, purpose)]}]
    return event


def disclosure(
    *,
    sender: str,
    recipient: str,
    purpose: str,
    classes: Sequence[str],
    patient_pseudonym: str,
    observer: str,
    envelope_id: str | None = None,
    consent_ref: str | None = None,
    user: str | None = None,
    outcome: str = SUCCESS,
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """Patient data left ``sender`` for ``recipient`` (DICOM 110106 Export)."""
    event = _base(
        "IHE.BasicAudit.PatientRead",
        _coding(DCM, "110106", "Export"),
        "R",
        observer,
        "4",
        outcome=outcome,
        recorded=recorded,
        subtype=[_coding(REST, "read")],
        purpose=purpose,
    )
    event["agent"] = [
        _agent(_org(sender), _coding(DCM, "110153", "Source Role ID"), requestor=user is None),
        _agent(
            _org(recipient),
            _coding(PARTICIPATION, "IRCP", "information recipient"),
            requestor=False,
        ),
    ]
    if user is not None:
        event["agent"].append(
            _agent(
                _user(sender, user),
                _coding(ROLE_CLASS, "PROV", "healthcare provider"),
                requestor=True,
            )
        )
    event["entity"] = [_patient(patient_pseudonym)]
    envelope_detail = [_classes_detail(classes)]
    event["entity"].append(_object(ENVELOPE_SYSTEM, envelope_id or "none", detail=envelope_detail))
    if consent_ref:
        event["entity"].append(
            {"what": {"reference": consent_ref}, "type": _coding(ENTITY_TYPE, "2")}
        )
    return event


def consent_change(
    *,
    patient_pseudonym: str,
    consent_id: str,
    action: str,
    actor: str,
    observer: str,
    actor_is_patient: bool = True,
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """A consent was created (C), narrowed/updated (U) or revoked (D)."""
    if action not in ("C", "U", "D"):
        raise ValueError("consent change action must be C, U or D")
    interaction = {"C": "create", "U": "update", "D": "delete"}[action]
    event = _base(
        {"C": "IHE.BasicAudit.Create", "U": "IHE.BasicAudit.Update", "D": "IHE.BasicAudit.Delete"}[
            action
        ],
        _coding(REST, "rest", "Restful Operation"),
        action,
        observer,
        "4",
        recorded=recorded,
        subtype=[_coding(REST, interaction)],
    )
    role = (
        _coding(ROLE_CLASS, "PAT", "patient") if actor_is_patient else _coding(ROLE_CLASS, "AGNT")
    )
    event["agent"] = [
        _agent(_user(observer, actor), role, requestor=True),
        _agent(_org(observer), _coding(DCM, "110150", "Application"), requestor=False),
    ]
    event["entity"] = [
        _patient(patient_pseudonym),
        {"what": {"reference": f"Consent/{consent_id}"}, "type": _coding(ENTITY_TYPE, "2")},
    ]
    return event


def break_glass(
    *,
    user: str,
    org: str,
    recipient: str,
    patient_pseudonym: str,
    reason: str,
    classes: Sequence[str],
    observer: str,
    envelope_id: str | None = None,
    recorded: dt.datetime | None = None,
    user_org: str | None = None,
) -> dict[str, Any]:
    """Emergency access without consent (purpose ETREAT, subtype BTG); the reason is kept.
    ``user_org``: the clinician's organisation when it is not ``org`` (a holder answering a
    break-glass pull on the pulling clinician's grant)."""
    if not reason.strip():
        raise ValueError("break-glass needs a stated reason")
    event = disclosure(
        sender=org,
        recipient=recipient,
        purpose="ETREAT",
        classes=classes,
        patient_pseudonym=patient_pseudonym,
        observer=observer,
        envelope_id=envelope_id,
        user=user,
        recorded=recorded,
    )
    event["subtype"].append(_coding(ACT_CODE, "BTG", "break the glass"))
    event["outcomeDesc"] = "break-glass access"
    event["entity"].append(
        {
            "what": {"identifier": {"system": f"{USER_SYSTEM}:{user_org or org}", "value": user}},
            "type": _coding(ENTITY_TYPE, "2"),
            "detail": [{"type": "break-glass-reason", "valueString": reason}],
        }
    )
    return event


def login_failure(
    *,
    username: str,
    observer: str,
    reason: str = "bad credentials",
    source_address: str | None = None,
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """A failed login (DICOM 110114 User Authentication / 110122 Login, serious failure)."""
    event = _base(
        None,  # BALP has no login-failure profile; the DICOM codes say what happened
        _coding(DCM, "110114", "User Authentication"),
        "E",
        observer,
        "6",
        outcome=SERIOUS_FAILURE,
        recorded=recorded,
        subtype=[_coding(DCM, "110122", "Login")],
    )
    event["outcomeDesc"] = reason
    agent = _agent(_user(observer, username), _coding(ROLE_CLASS, "AGNT"), requestor=True)
    if source_address:
        agent["network"] = {"address": source_address, "type": "2"}
    event["agent"] = [agent]
    return event


def training_run(
    *,
    run_id: str,
    observer: str,
    nodes: Sequence[str],
    model: str,
    epsilon: float,
    delta: float,
    outcome: str = SUCCESS,
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """A federated training run under purpose HRESCH, with its privacy parameters."""
    event = _base(
        "IHE.BasicAudit.PatientQuery",
        _coding(DCM, "110112", "Query"),
        "E",
        observer,
        "4",
        outcome=outcome,
        recorded=recorded,
        purpose="HRESCH",
    )
    event["agent"] = [
        _agent(_org(observer), _coding(DCM, "110153", "Source Role ID"), requestor=True)
    ] + [
        _agent(_org(n), _coding(PARTICIPATION, "IRCP", "information recipient"), requestor=False)
        for n in nodes
    ]
    event["entity"] = [
        _object(
            RUN_SYSTEM,
            run_id,
            detail=[
                {"type": "model", "valueString": model},
                {"type": "epsilon", "valueString": repr(float(epsilon))},
                {"type": "delta", "valueString": repr(float(delta))},
                {"type": "nodes", "valueString": " ".join(nodes)},
            ],
        )
    ]
    return event


def routing_decision(
    *,
    permit: bool,
    sender: str,
    recipient: str,
    purpose: str,
    classes: Sequence[str],
    patient_pseudonym: str | None,
    observer: str,
    reason: str,
    envelope_id: str | None = None,
    consent_refs: Sequence[str] = (),
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """A consent-based authorization decision (BALP AuthZconsent), permit or deny."""
    event = _base(
        "IHE.BasicAudit.AuthZconsent",
        _coding(DCM, "110113", "Security Alert"),
        "E",
        observer,
        "6",
        outcome=SUCCESS if permit else SERIOUS_FAILURE,
        recorded=recorded,
        subtype=[_coding(AUTHZ_SUBTYPE, "AuthZ-Consent", "Authorization Decision using Consent")],
        purpose=purpose,
    )
    event["outcomeDesc"] = ("permit: " if permit else "deny: ") + reason
    event["agent"] = [
        _agent(_org(sender), _coding(DCM, "110153", "Source Role ID"), requestor=True),
        _agent(
            _org(recipient),
            _coding(PARTICIPATION, "IRCP", "information recipient"),
            requestor=False,
        ),
        _agent(_org(observer), _coding(DCM, "110150", "Application"), requestor=False),
    ]
    entities = [_patient(patient_pseudonym)] if patient_pseudonym else []
    entities.append(
        _object(ENVELOPE_SYSTEM, envelope_id or "none", detail=[_classes_detail(classes)])
    )
    entities += [
        {"what": {"reference": ref}, "type": _coding(ENTITY_TYPE, "2")} for ref in consent_refs
    ]
    event["entity"] = entities
    return event


def patient_pseudonym_of(event: dict[str, Any]) -> str | None:
    """The pseudonym of the patient an AuditEvent is about, if any."""
    for entity in event.get("entity", []):
        ident = entity.get("what", {}).get("identifier", {})
        if ident.get("system") == PSEUDONYM_SYSTEM:
            return str(ident.get("value"))
    return None


def oprf_evaluation(
    *,
    org_id: str,
    observer: str,
    count: int,
    key_version: int | None,
    outcome: str,
    recorded: dt.datetime | None = None,
) -> dict[str, Any]:
    """The pseudonymisation authority evaluated (or refused) ``count`` blinded elements for
    ``org_id``: who, how many, which key version — no element and no identifier."""
    event = _base(
        None,
        _coding(DCM, "110112", "Query"),
        "E",
        observer,
        "4",
        outcome=SUCCESS if outcome == "evaluated" else MINOR_FAILURE,
        recorded=recorded,
        subtype=[_coding("urn:ipjms:audit", "oprf-evaluate", "OPRF evaluation (RFC 9497)")],
    )
    event["outcomeDesc"] = outcome
    event["agent"] = [
        _agent(_org(org_id), _coding(DCM, "110153", "Source Role ID"), requestor=True),
        _agent(_org(observer), _coding(DCM, "110150", "Application"), requestor=False),
    ]
    event["entity"] = [
        _object(
            "urn:ipjms:oprf-key-version",
            str(key_version) if key_version is not None else "none",
            detail=[{"type": "blinded-elements", "valueString": str(count)}],
        )
    ]
    return event
