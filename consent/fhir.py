"""FHIR R4 ``Consent`` ⇄ :class:`consent.policy.ConsentRecord`, both directions.

Wire shape (what patients' apps send and what the registry returns)::

    {"resourceType": "Consent", "status": "active",
     "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
     "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
     "patient": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": "<pseudonym>"}},
     "policyRule": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTIN"}]},
     "provision": {"type": "deny", "period": {...},        # validity of the whole consent
       "provision": [{"type": "permit",
         "actor": [{"role": IRCP, "reference": {"reference": "Organization/clinic-b"}}],
         "purpose": [{"system": ACT_REASON_SYSTEM, "code": "TREAT"}],
         "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "Condition"}]}]}}

A provision without ``actor`` applies to the whole network. Patients are named by their regional
pseudonym only (a logical identifier reference), never by name or national id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from consent.model import (
    ConsentRecord,
    Period,
    Provision,
    check_org_id,
    check_purpose,
    validate_record,
)
from consent.policy import RESOURCE_CLASSES
from servicekit.outcome import BadRequest

__all__ = [
    "PSEUDONYM_SYSTEM",
    "ACT_REASON_SYSTEM",
    "RESOURCE_TYPES_SYSTEM",
    "CONSENT_SCOPE_SYSTEM",
    "LOINC",
    "to_fhir",
    "from_fhir",
    "validate_fhir",
    "parse_datetime",
]

PSEUDONYM_SYSTEM = "https://ipjms.example.org/fhir/sid/pseudonym"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
LOINC = "http://loinc.org"
PRIVACY_CONSENT_LOINC = "59284-0"
RECIPIENT_ROLE = "IRCP"  # information recipient


def parse_datetime(value: object, field: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a FHIR dateTime string", expression=[field])
    text = value.strip()
    if len(text) == 10:  # a date: the start of that day, UTC
        text += "T00:00:00+00:00"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{field}: {value!r} is not a valid dateTime", expression=[field]
        ) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{field}: a time zone is required", expression=[field])
    return parsed


def _fmt(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _period_to_fhir(p: Period) -> dict[str, str]:
    out = {}
    if p.start is not None:
        out["start"] = _fmt(p.start)
    if p.end is not None:
        out["end"] = _fmt(p.end)
    return out


def _period_from_fhir(raw: object, field: str) -> Period | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(f"{field} must be a Period", expression=[field])
    start = parse_datetime(raw["start"], f"{field}.start") if "start" in raw else None
    end = parse_datetime(raw["end"], f"{field}.end") if "end" in raw else None
    return Period(start, end)


def _provision_to_fhir(p: Provision, *, period: Period | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type}
    effective = period if period is not None else p.period
    if effective is not None:
        out["period"] = _period_to_fhir(effective)
    if p.actors is not None:
        out["actor"] = [
            {
                "role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": RECIPIENT_ROLE}]},
                "reference": {"reference": f"Organization/{org}"},
            }
            for org in sorted(p.actors)
        ]
    if p.purposes is not None:
        out["purpose"] = [{"system": ACT_REASON_SYSTEM, "code": c} for c in sorted(p.purposes)]
    if p.classes is not None:
        out["class"] = [{"system": RESOURCE_TYPES_SYSTEM, "code": c} for c in sorted(p.classes)]
    if p.data_period is not None:
        out["dataPeriod"] = _period_to_fhir(p.data_period)
    if p.provisions:
        out["provision"] = [_provision_to_fhir(c) for c in p.provisions]
    return out


def to_fhir(record: ConsentRecord, *, version_id: str | None = None) -> dict[str, Any]:
    """The FHIR R4 ``Consent`` for a record (validated by the caller's store on the way in)."""
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": record.id,
        "status": record.status,
        "scope": {
            "coding": [
                {
                    "system": CONSENT_SCOPE_SYSTEM,
                    "code": "patient-privacy",
                    "display": "Privacy Consent",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {"system": LOINC, "code": PRIVACY_CONSENT_LOINC, "display": "Patient consent"}
                ]
            }
        ],
        "patient": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": record.patient}},
        "policyRule": {
            "coding": [
                {
                    "system": ACT_CODE_SYSTEM,
                    "code": "OPTIN" if record.provision.type == "deny" else "OPTOUT",
                }
            ]
        },
        "provision": _provision_to_fhir(record.provision, period=record.period),
    }
    if record.date_time is not None:
        resource["dateTime"] = _fmt(record.date_time)
    if version_id is not None:
        resource["meta"] = {"versionId": version_id}
    return resource


def validate_fhir(resource: object) -> dict[str, Any]:
    """Structural validation with ``fhir.resources.R4B``; BadRequest names the failing field."""
    from fhir.resources.R4B.consent import Consent

    if not isinstance(resource, dict):
        raise BadRequest("body must be a JSON object (a FHIR Consent)")
    if resource.get("resourceType") != "Consent":
        raise BadRequest("resourceType must be Consent", expression=["resourceType"])
    try:
        Consent.model_validate(resource)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        where = f"Consent.{loc}" if loc else "Consent"
        raise BadRequest(
            f"invalid Consent: {where}: {err.get('msg')}", expression=[where]
        ) from None
    except Exception as exc:  # fhir.resources raises plain errors for some invariants
        raise BadRequest(f"invalid Consent: {exc.__class__.__name__}: {exc}") from None
    return resource


def _codes(raw: object, system: str, field: str) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"{field} must be a non-empty list of codings", expression=[field])
    codes = []
    for i, coding in enumerate(raw):
        path = f"{field}[{i}]"
        if not isinstance(coding, dict) or "code" not in coding:
            raise BadRequest(f"{path} must be a Coding with a code", expression=[path])
        if coding.get("system", system) != system:
            raise BadRequest(f"{path}.system must be {system}", expression=[f"{path}.system"])
        codes.append(coding["code"])
    return codes


def _actors(raw: object, field: str) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"{field} must be a non-empty list", expression=[field])
    orgs = set()
    for i, actor in enumerate(raw):
        path = f"{field}[{i}]"
        role_codes = [
            c.get("code")
            for c in (actor.get("role") or {}).get("coding", [])
            if isinstance(c, dict)
        ]
        if RECIPIENT_ROLE not in role_codes:
            raise BadRequest(
                f"{path}.role must be {PARTICIPATION_SYSTEM}|{RECIPIENT_ROLE} (the recipient)",
                expression=[f"{path}.role"],
            )
        ref = (actor.get("reference") or {}).get("reference", "")
        if not isinstance(ref, str) or not ref.startswith("Organization/"):
            raise BadRequest(
                f"{path}.reference must be Organization/<id>", expression=[f"{path}.reference"]
            )
        orgs.add(check_org_id(ref.split("/", 1)[1], f"{path}.reference"))
    return frozenset(orgs)


def _provision_from_fhir(raw: object, field: str) -> Provision:
    if not isinstance(raw, dict):
        raise BadRequest(f"{field} is required", expression=[field])
    ptype = raw.get("type")
    if ptype not in ("permit", "deny"):
        raise BadRequest(f"{field}.type must be permit or deny", expression=[f"{field}.type"])
    purposes = None
    if "purpose" in raw:
        codes = _codes(raw["purpose"], ACT_REASON_SYSTEM, f"{field}.purpose")
        purposes = frozenset(check_purpose(c, f"{field}.purpose") for c in codes)
    classes = None
    if "class" in raw:
        codes = _codes(raw["class"], RESOURCE_TYPES_SYSTEM, f"{field}.class")
        for i, code in enumerate(codes):
            if code not in RESOURCE_CLASSES:
                path = f"{field}.class[{i}]"
                raise BadRequest(
                    f"{path}: unknown or unsupported data class {code!r}", expression=[path]
                )
        classes = frozenset(codes)
    nested = raw.get("provision") or []
    if not isinstance(nested, list):
        raise BadRequest(f"{field}.provision must be a list", expression=[f"{field}.provision"])
    return Provision(
        type=ptype,
        actors=_actors(raw.get("actor"), f"{field}.actor"),
        purposes=purposes,
        classes=classes,
        period=_period_from_fhir(raw.get("period"), f"{field}.period"),
        data_period=_period_from_fhir(raw.get("dataPeriod"), f"{field}.dataPeriod"),
        provisions=tuple(
            _provision_from_fhir(child, f"{field}.provision[{i}]") for i, child in enumerate(nested)
        ),
    )


def _patient(raw: object) -> str:
    if not isinstance(raw, dict):
        raise BadRequest("Consent.patient is required", expression=["Consent.patient"])
    ident = raw.get("identifier")
    if not isinstance(ident, dict) or ident.get("system") != PSEUDONYM_SYSTEM:
        raise BadRequest(
            "Consent.patient must be a logical reference with identifier.system "
            f"{PSEUDONYM_SYSTEM}",
            expression=["Consent.patient.identifier"],
        )
    return str(ident.get("value", ""))


def from_fhir(
    resource: object, *, record_id: str | None = None, validated: bool = False
) -> ConsentRecord:
    """Parse and validate a FHIR ``Consent`` into a record. BadRequest names the bad field.

    ``validated=True`` skips the (slow) FHIR model validation for bodies this registry stored
    itself; our own rules are still checked.
    """
    if validated and isinstance(resource, dict):
        body: dict[str, Any] = resource
    else:
        body = validate_fhir(resource)
    scope_codes = [c.get("code") for c in (body.get("scope") or {}).get("coding", [])]
    if "patient-privacy" not in scope_codes:
        raise BadRequest("Consent.scope must be patient-privacy", expression=["Consent.scope"])
    categories = [c.get("code") for cat in body.get("category", []) for c in cat.get("coding", [])]
    if PRIVACY_CONSENT_LOINC not in categories:
        raise BadRequest(
            f"Consent.category must include LOINC {PRIVACY_CONSENT_LOINC}",
            expression=["Consent.category"],
        )
    patient = _patient(body.get("patient"))
    root = _provision_from_fhir(body.get("provision"), "Consent.provision")
    # The root provision's period is the validity of the whole consent.
    period, root = (
        root.period,
        Provision(
            root.type,
            root.actors,
            root.purposes,
            root.classes,
            None,
            root.data_period,
            root.provisions,
        ),
    )
    date_time = parse_datetime(body["dateTime"], "Consent.dateTime") if "dateTime" in body else None
    record = ConsentRecord(
        id=record_id or str(body.get("id") or ""),
        patient=patient,
        status=str(body.get("status")),
        provision=root,
        period=period,
        date_time=date_time,
    )
    return validate_record(record)
