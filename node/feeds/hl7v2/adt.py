"""ADT^A01 (admit) / ADT^A03 (discharge) / ADT^A08 (update) → Patient + Encounter.

Patient: conditional create on the matching identifier (A01, A03) or conditional update (A08,
which carries the patient's current demographics). Encounter: conditional update on the visit
number (PV1-19), so A01 creates the stay, A03 finishes it, and a repeated message only re-writes
the same resource.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from node.feeds.hl7v2.datatypes import IdentifierSystems, hl7_datetime, identifier
from node.feeds.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT,
    ErrorLocation,
    MessageInvalid,
    MessageRejected,
)
from node.feeds.hl7v2.message import Message, field_value
from node.feeds.hl7v2.patient import patient_from_pid, pid_segment
from node.feeds.transaction_bundle import TransactionBuilder
from node.store.idempotency import identifier_criteria

__all__ = ["ADT_EVENTS", "adt_to_bundle"]

ADT_EVENTS = ("A01", "A03", "A08")
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# PV1-2 patient class (HL7 table 0004) → Encounter.class (v3 ActCode)
PATIENT_CLASSES = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
}


def _event_time(message: Message, pv1_field: int, default_tz: tzinfo) -> str | None:
    """PV1-44/45, else EVN-6 (event occurred), else EVN-2 (recorded)."""
    pv1 = message.segments("PV1")[0]
    if value := field_value(pv1, pv1_field):
        return hl7_datetime(value, ErrorLocation("PV1", field=pv1_field), default_tz)
    for evn in message.segments("EVN")[:1]:
        for number in (6, 2):
            if value := field_value(evn, number):
                return hl7_datetime(value, ErrorLocation("EVN", field=number), default_tz)
    return None


def _encounter(
    message: Message, event: str, patient_ref: str, systems: IdentifierSystems, default_tz: tzinfo
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    pv1s = message.segments("PV1")
    if not pv1s:
        if event == "A08":
            return None
        raise MessageInvalid(
            f"ADT^{event} needs a PV1 segment",
            condition=SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("PV1"),
        )
    pv1 = pv1s[0]
    visit = identifier(pv1, 19, 1, systems)
    if visit is None:
        if event == "A08":
            return None
        raise MessageInvalid(
            "PV1-19 (visit number) is empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("PV1", field=19),
        )
    patient_class = field_value(pv1, 2)
    if patient_class not in PATIENT_CLASSES:
        raise MessageInvalid(
            f"PV1-2 patient class {patient_class!r} is not in HL7 table 0004 (I, O, E, P, R, B)",
            condition=TABLE_VALUE_NOT_FOUND if patient_class else REQUIRED_FIELD_MISSING,
            location=ErrorLocation("PV1", field=2),
        )
    code, display = PATIENT_CLASSES[patient_class]
    start: str | None = None
    if field_value(pv1, 44):
        start = hl7_datetime(field_value(pv1, 44), ErrorLocation("PV1", field=44), default_tz)
    elif event == "A01":
        start = _event_time(message, 44, default_tz)
    end: str | None = None
    if field_value(pv1, 45):
        end = hl7_datetime(field_value(pv1, 45), ErrorLocation("PV1", field=45), default_tz)
    elif event == "A03":
        end = _event_time(message, 45, default_tz)
    if event in ("A01", "A03") and start is None:
        raise MessageInvalid(
            "admission date/time missing (PV1-44; for A01 also EVN-6 or EVN-2)",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("PV1", field=44),
        )
    if event == "A03" and end is None:
        raise MessageInvalid(
            "discharge date/time missing (PV1-45, EVN-6 or EVN-2)",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("PV1", field=45),
        )
    if start and end and "T" in start and "T" in end and _instant(end) < _instant(start):
        raise MessageInvalid(
            "discharge (PV1-45) is before admission (PV1-44)",
            condition=DATA_TYPE_ERROR,
            location=ErrorLocation("PV1", field=45),
        )
    visit["type"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]
    }
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [visit],
        "status": "finished" if end else "in-progress",
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": {"reference": patient_ref},
    }
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    return encounter, visit


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def adt_to_bundle(
    message: Message, systems: IdentifierSystems, default_tz: tzinfo
) -> dict[str, Any]:
    header = message.header
    event = header.trigger_event
    if event not in ADT_EVENTS:
        raise MessageRejected(
            f"ADT event {event or '(none)'!r} is not supported ({', '.join(ADT_EVENTS)})",
            condition=UNSUPPORTED_EVENT,
            location=ErrorLocation("MSH", field=9, component=2),
        )
    patient, match_on = patient_from_pid(pid_segment(message), systems)
    builder = TransactionBuilder(f"hl7v2/{header.sending_application}/{header.control_id}")
    match = (match_on["system"], match_on["value"])
    search = identifier_criteria(*match)
    if event == "A08":
        patient_ref = builder.conditional_update("patient", patient, search)
    else:
        patient_ref = builder.create("patient", patient, identifier=match)
    built = _encounter(message, event, patient_ref, systems, default_tz)
    if built is not None:
        encounter, visit = built
        builder.conditional_update(
            "encounter", encounter, identifier_criteria(visit["system"], visit["value"])
        )
    return builder.bundle()
