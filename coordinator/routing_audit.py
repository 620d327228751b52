"""Every routing decision of the coordinator as an AuditEvent in the hash-chained ledger.

Decisions: ``accepted`` / ``refused`` at Send, ``delivered`` / ``dead`` at delivery,
``imported`` / ``rejected`` when the recipient acknowledges, ``lookup-permitted`` /
``lookup-refused`` for record-locator lookups (a lookup discloses where a patient is treated).
A routing event names organisations, the envelope id, its kind and the patient's routing
pseudonym — what the clear header says; never content, and no purpose or data class, which the
coordinator does not see (issue 23). A break-glass envelope the registry re-admitted carries the
``BTG`` subtype, purpose ``ETREAT`` and the re-admission reason (clinician, stated reason,
grant): the registry told the coordinator that much. A lookup event names the caller, the
pseudonym looked up, the lookup id its registry decision is bound to, the outcome and how many
holders it was told — no purpose and no class either (the lookup states neither); a break-glass
lookup the registry re-admitted carries ``BTG`` and ``ETREAT`` as above.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from trust.envelopes import EnvelopeHeader

__all__ = ["RoutingAuditor", "routing_event", "lookup_event", "ORG_SYSTEM", "PSEUDONYM_SYSTEM"]

log = logging.getLogger("ipjms.coordinator.audit")

ORG_SYSTEM = "https://ipjms.example.org/fhir/sid/org"
PSEUDONYM_SYSTEM = "https://ipjms.example.org/fhir/sid/patient-pseudonym"
ROUTING_SYSTEM = "https://ipjms.example.org/fhir/CodeSystem/routing-decision"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_OK = {"accepted", "delivered", "imported", "lookup-permitted"}


class Ledger(Protocol):
    def append(self, event: dict[str, Any], *, patient_pseudonym: str | None = None) -> Any: ...

    def append_in(
        self, conn: Any, event: dict[str, Any], *, patient_pseudonym: str | None = None
    ) -> Any: ...


def _source() -> dict[str, Any]:
    """The AuditEvent source of every coordinator event: the coordinator as a security server."""
    return {
        "observer": {"display": "ipjms-coordinator"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "6",
                "display": "Security Server",
            }
        ],
    }


def routing_event(
    header: EnvelopeHeader,
    decision: str,
    reason: str,
    consent_ids: Sequence[str] = (),
    *,
    break_glass: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A BALP-shaped AuditEvent (transmit/export) for one routing decision; ``break_glass``:
    the registry re-admitted the envelope under a break-glass grant. Pure."""
    now = now or dt.datetime.now(dt.UTC)
    entity: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": header.patient_pseudonym}},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        },
        {
            "what": {"identifier": {"value": header.envelope_id}},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "detail": [{"type": "kind", "valueString": header.kind}],
        },
    ]
    for consent_id in consent_ids:
        entity.append({"what": {"reference": f"Consent/{consent_id}"}})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110106",
            "display": "Export",
        },
        "subtype": [{"system": ROUTING_SYSTEM, "code": decision}]
        + (  # an emergency envelope is marked break-glass in every routing decision
            [{"system": ACT_CODE, "code": "BTG", "display": "break the glass"}]
            if break_glass
            else []
        ),
        "action": "E",
        "recorded": now.isoformat(),
        "outcome": "0" if decision in _OK else "4",
        "outcomeDesc": reason[:500],
        "agent": [
            {
                "who": {"identifier": {"system": ORG_SYSTEM, "value": header.sender}},
                "requestor": True,
            },
            {
                "who": {"identifier": {"system": ORG_SYSTEM, "value": header.recipient}},
                "requestor": False,
            },
        ],
        "source": _source(),
        "entity": entity,
    }
    if break_glass:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "ETREAT",
                    }
                ]
            }
        ]
    return event


def lookup_event(
    *,
    caller: str,
    patient_pseudonym: str,
    lookup_id: str,
    permitted: bool,
    reason: str,
    holders: int,
    consent_ids: Sequence[str] = (),
    break_glass: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A BALP-shaped AuditEvent (query) for one record-locator lookup: the caller, the patient's
    pseudonym, the lookup id (what its registry decision is bound to), how many holders it was
    told. No purpose or class (the coordinator is not told them); a re-admitted break-glass
    lookup is marked ``BTG`` / ``ETREAT``. Pure."""
    now = now or dt.datetime.now(dt.UTC)
    decision = "lookup-permitted" if permitted else "lookup-refused"
    entity: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": patient_pseudonym}},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        },
        {
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "detail": [
                {"type": "kind", "valueString": "locator-lookup"},
                {"type": "lookup", "valueString": lookup_id},
                {"type": "holders", "valueString": str(holders)},
            ],
        },
    ]
    for consent_id in consent_ids:
        entity.append({"what": {"reference": f"Consent/{consent_id}"}})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110112",
            "display": "Query",
        },
        "subtype": [{"system": ROUTING_SYSTEM, "code": decision}],
        "action": "E",
        "recorded": now.isoformat(),
        "outcome": "0" if permitted else "4",
        "outcomeDesc": reason[:500],
        "agent": [
            {"who": {"identifier": {"system": ORG_SYSTEM, "value": caller}}, "requestor": True},
        ],
        "source": _source(),
        "entity": entity,
    }
    if break_glass:  # the registry re-admitted a break-glass pull grant: it said that much
        event["subtype"].append({"system": ACT_CODE, "code": "BTG", "display": "break the glass"})
        event["purposeOfEvent"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "ETREAT",
                    }
                ]
            }
        ]
    return event


class RoutingAuditor:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def record(
        self,
        header: EnvelopeHeader,
        decision: str,
        reason: str,
        consent_ids: Sequence[str],
        *,
        break_glass: bool = False,
    ) -> None:
        event = routing_event(header, decision, reason, consent_ids, break_glass=break_glass)
        self.ledger.append(event, patient_pseudonym=header.patient_pseudonym)

    def record_in(
        self,
        conn: Any,
        header: EnvelopeHeader,
        decision: str,
        reason: str,
        consent_ids: Sequence[str] = (),
        *,
        break_glass: bool = False,
    ) -> None:
        """As :meth:`record`, inside the caller's open transaction on the ledger's database (the
        queue's state change it audits): both are durable with that one commit, or neither."""
        event = routing_event(header, decision, reason, consent_ids, break_glass=break_glass)
        self.ledger.append_in(conn, event, patient_pseudonym=header.patient_pseudonym)

    def record_lookup(
        self,
        *,
        caller: str,
        patient_pseudonym: str,
        lookup_id: str,
        permitted: bool,
        reason: str,
        holders: int,
        consent_ids: Sequence[str] = (),
        break_glass: bool = False,
    ) -> None:
        event = lookup_event(
            caller=caller,
            patient_pseudonym=patient_pseudonym,
            lookup_id=lookup_id,
            permitted=permitted,
            reason=reason,
            holders=holders,
            consent_ids=consent_ids,
            break_glass=break_glass,
        )
        self.ledger.append(event, patient_pseudonym=patient_pseudonym)
