"""PID → FHIR Patient and the identifier the node matches the patient on."""

from __future__ import annotations

from typing import Any

import hl7

from node.feeds.hl7v2.datatypes import (
    IdentifierSystems,
    gender,
    hl7_datetime,
    identifier,
    xad_address,
    xpn_name,
)
from node.feeds.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    ErrorLocation,
    MessageInvalid,
)
from node.feeds.hl7v2.message import Message, field_value
from node.identity import NATIONAL_ID_SYSTEM

__all__ = ["MAX_REPETITIONS", "patient_from_pid", "pid_segment"]

MAX_REPETITIONS = 20


def pid_segment(message: Message) -> hl7.Segment:
    pids = message.segments("PID")
    if not pids:
        raise MessageInvalid(
            "the message has no PID segment",
            condition=SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("PID"),
        )
    return pids[0]


def patient_from_pid(
    pid: hl7.Segment, systems: IdentifierSystems
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Patient resource, the identifier to match on: the national one if present, else PID-3~1)."""
    identifiers = [
        ident
        for rep in range(1, MAX_REPETITIONS + 1)
        if (ident := identifier(pid, 3, rep, systems)) is not None
    ]
    if not identifiers:
        raise MessageInvalid(
            "PID-3 (patient identifier list) is empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("PID", field=3),
        )
    national = [i for i in identifiers if i["system"] == NATIONAL_ID_SYSTEM]
    match_on = national[0] if national else identifiers[0]
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}
    names = [n for rep in range(1, MAX_REPETITIONS + 1) if (n := xpn_name(pid, 5, rep))]
    if names:
        patient["name"] = names
    if birth := field_value(pid, 7):
        patient["birthDate"] = hl7_datetime(birth, ErrorLocation("PID", field=7))[:10]
    if sex := gender(field_value(pid, 8), ErrorLocation("PID", field=8)):
        patient["gender"] = sex
    addresses = [a for rep in range(1, MAX_REPETITIONS + 1) if (a := xad_address(pid, 11, rep))]
    if addresses:
        patient["address"] = addresses
    return patient, match_on
