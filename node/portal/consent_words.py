"""A consent in plain words: for each rule, who may receive the data, for what, which kinds of
data and until when (pure; the template translates the words). Also the one way the pages
build a consent the patient grants or narrows — as ``consent.policy`` records, turned into FHIR
by ``consent.fhir`` (the registry validates and decides)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from consent.fhir import from_fhir, to_fhir
from consent.policy import ConsentRecord, Period, Provision

__all__ = ["ConsentLine", "plain_words", "grant_resource", "narrowed", "PURPOSE_WORDS", "CLASSES"]

# What a patient can choose from (FHIR resource types, named in plain words by the template).
CLASSES = (
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "AllergyIntolerance",
    "Procedure",
    "Encounter",
    "Immunization",
    "DiagnosticReport",
)
PURPOSE_WORDS = {
    "TREAT": "for your care",
    "ETREAT": "in an emergency",
    "HRESCH": "for health research",
}


@dataclass(frozen=True)
class ConsentLine:
    consent_id: str
    status: str
    permit: bool
    who: tuple[str, ...]  # organisation ids; () = anyone in the network
    purposes: tuple[str, ...]
    classes: tuple[str, ...]  # () = every kind of data
    until: str | None


def plain_words(resource: dict[str, Any]) -> list[ConsentLine]:
    record = from_fhir(resource, validated=True)
    rules = record.provision.provisions or (record.provision,)
    lines = []
    for rule in rules:
        end = (rule.period or record.period or Period()).end
        lines.append(
            ConsentLine(
                consent_id=record.id,
                status=record.status,
                permit=rule.type == "permit",
                who=tuple(sorted(rule.actors or ())),
                purposes=tuple(sorted(rule.purposes or ())),
                classes=tuple(sorted(rule.classes or ())),
                until=end.date().isoformat() if end else None,
            )
        )
    return lines


def grant_resource(
    pseudonym: str, org: str, purpose: str, classes: list[str], until: datetime | None
) -> dict[str, Any]:
    """A new consent: deny by default, permit ``org`` ``purpose`` for ``classes`` until then."""
    period = Period(end=until) if until else None
    rule = Provision(
        "permit",
        actors=frozenset({org}),
        purposes=frozenset({purpose}),
        classes=frozenset(classes) or None,
        period=period,
    )
    record = ConsentRecord(
        "new", pseudonym, "active", Provision("deny", provisions=(rule,)), date_time=_now()
    )
    body = to_fhir(record)
    del body["id"]
    return body


def narrowed(resource: dict[str, Any], keep: list[str], until: datetime | None) -> dict[str, Any]:
    """The consent with each permit rule limited to the ``keep`` kinds of data (never wider) and
    ending by ``until``."""
    record = from_fhir(resource, validated=True)
    kept = frozenset(keep)
    rules = []
    for rule in record.provision.provisions:
        if rule.type == "permit":
            classes = (rule.classes & kept) if rule.classes else kept
            end = rule.period.end if rule.period else None
            if until is not None and (end is None or until < end):
                end = until
            rule = replace(
                rule,
                classes=frozenset(classes),
                period=Period(start=rule.period.start if rule.period else None, end=end)
                if end
                else rule.period,
            )
        rules.append(rule)
    narrowed_record = replace(record, provision=replace(record.provision, provisions=tuple(rules)))
    body = to_fhir(narrowed_record)
    body["id"] = record.id
    return body


def _now() -> datetime:
    return datetime.now(UTC)
