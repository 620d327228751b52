"""ORU^R01 (lab results) → Patient + one Observation per OBX + a DiagnosticReport per OBR.

Idempotency: the DiagnosticReport carries the filler order number (OBR-3, else placer OBR-2)
as identifier, each Observation ``<order>/<OBX-1 set id>/<OBX-3 code>``; results are conditional
creates on those, except corrected results (OBX-11 / OBR-25 = C), which are conditional updates.
"""

from __future__ import annotations

import re
from datetime import tzinfo
from typing import Any

import hl7

from node.feeds.hl7v2.datatypes import IdentifierSystems, coded, entity_identifier, hl7_datetime
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
from node.feeds.terminology import LOINC, OBSERVATION_CATEGORY, UCUM, observation_category
from node.feeds.transaction_bundle import TransactionBuilder
from node.store.idempotency import identifier_criteria

__all__ = ["oru_to_bundle"]

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# OBX-8 abnormal flags (HL7 table 0078) → v3 ObservationInterpretation
ABNORMAL_FLAGS = {
    "L": "L", "H": "H", "LL": "LL", "HH": "HH", "N": "N", "A": "A", "AA": "AA",
    "<": "<", ">": ">", "S": "S", "R": "R", "I": "I", "U": "HU", "D": "L", "B": "B", "W": "W",
}  # fmt: skip
# OBX-11 / OBR-25 result status (HL7 table 0085 / 0123) → FHIR status
OBX_STATUS = {
    "F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "preliminary",
    "I": "registered", "X": "cancelled", "D": "entered-in-error", "W": "entered-in-error",
}  # fmt: skip
REPORT_STATUS = {
    "F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "partial",
    "I": "registered", "O": "registered", "X": "cancelled", "A": "partial",
}  # fmt: skip
TEXT_TYPES = ("ST", "TX", "FT")
CODED_TYPES = ("CE", "CWE", "CNE")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*$")
_BOUND = re.compile(r"^\s*(<=?|>=?)\s*([+-]?\d+(?:\.\d+)?)\s*$")


def _number(text: str, location: ErrorLocation) -> float | int:
    if not _NUMBER.match(text.strip()):
        raise MessageInvalid(
            f"{text!r} is not a number (value type NM)",
            condition=DATA_TYPE_ERROR,
            location=location,
        )
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _quantity(value: float | int, obx: hl7.Segment) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    unit_code = field_value(obx, 6, 1, 1)
    if unit_code:
        unit_system = field_value(obx, 6, 1, 3)
        quantity["unit"] = field_value(obx, 6, 1, 2) or unit_code
        if unit_system in ("", "UCUM", "ANS+"):
            quantity["system"] = UCUM
            quantity["code"] = unit_code
    return quantity


def _value(obx: hl7.Segment, seq: int) -> dict[str, Any]:
    value_type = field_value(obx, 2)
    raw = field_value(obx, 5)
    where = ErrorLocation("OBX", seq, 5)
    if not raw:
        return {}
    if value_type == "NM":
        return {"valueQuantity": _quantity(_number(raw, where), obx)}
    if value_type == "SN":
        comparator = field_value(obx, 5, 1, 1)
        if comparator not in ("", "<", ">", "<=", ">=", "=") or field_value(obx, 5, 1, 3):
            raise MessageInvalid(
                "only simple structured numerics ([comparator]^number) are supported",
                condition=DATA_TYPE_ERROR,
                location=where,
            )
        quantity = _quantity(_number(field_value(obx, 5, 1, 2), where), obx)
        if comparator not in ("", "="):
            quantity["comparator"] = comparator
        return {"valueQuantity": quantity}
    if value_type in TEXT_TYPES:
        return {"valueString": raw}
    if value_type in CODED_TYPES:
        concept = coded(obx, 5)
        return {"valueCodeableConcept": concept} if concept else {}
    raise MessageInvalid(
        f"OBX-2 value type {value_type or '(empty)'!r} is not supported "
        "(NM, SN, ST, TX, FT, CE, CWE)",
        condition=DATA_TYPE_ERROR if value_type else REQUIRED_FIELD_MISSING,
        location=ErrorLocation("OBX", seq, 2),
    )


def _reference_range(obx: hl7.Segment, unit: dict[str, Any] | None) -> list[dict[str, Any]]:
    text = field_value(obx, 7)
    if not text:
        return []

    def bound(v: str) -> dict[str, Any]:
        return {
            "value": float(v),
            **({k: unit[k] for k in ("unit", "system", "code") if k in unit} if unit else {}),
        }

    if m := _RANGE.match(text):
        return [{"low": bound(m.group(1)), "high": bound(m.group(2)), "text": text}]
    if m := _BOUND.match(text):
        return [
            {("high" if m.group(1).startswith("<") else "low"): bound(m.group(2)), "text": text}
        ]
    return [{"text": text}]


def _table(value: str, table: dict[str, str], name: str, location: ErrorLocation) -> str:
    if value not in table:
        raise MessageInvalid(
            f"{value!r} is not a known {name}",
            condition=TABLE_VALUE_NOT_FOUND if value else REQUIRED_FIELD_MISSING,
            location=location,
        )
    return table[value]


def _groups(message: Message) -> list[tuple[hl7.Segment, list[tuple[int, hl7.Segment]]]]:
    """OBR segments, each with its OBX segments (and their 1-based position among all OBX)."""
    groups: list[tuple[hl7.Segment, list[tuple[int, hl7.Segment]]]] = []
    obx_seq = 0
    for segment, seg_id in zip(message.parsed, message.segment_ids, strict=True):
        if seg_id == "OBR":
            groups.append((segment, []))
        elif seg_id == "OBX":
            obx_seq += 1
            if not groups:
                raise MessageInvalid(
                    "OBX before any OBR",
                    condition=SEGMENT_SEQUENCE_ERROR,
                    location=ErrorLocation("OBX", obx_seq),
                )
            groups[-1][1].append((obx_seq, segment))
    if not groups:
        raise MessageInvalid(
            "ORU^R01 has no OBR segment",
            condition=SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("OBR"),
        )
    return groups


def oru_to_bundle(
    message: Message, systems: IdentifierSystems, default_tz: tzinfo
) -> dict[str, Any]:
    header = message.header
    if header.trigger_event != "R01":
        raise MessageRejected(
            f"ORU event {header.trigger_event or '(none)'!r} is not supported (R01)",
            condition=UNSUPPORTED_EVENT,
            location=ErrorLocation("MSH", field=9, component=2),
        )
    patient, match_on = patient_from_pid(pid_segment(message), systems)
    builder = TransactionBuilder(f"hl7v2/{header.sending_application}/{header.control_id}")
    patient_ref = builder.create(
        "patient", patient, identifier=(match_on["system"], match_on["value"])
    )
    for obr_seq, (obr, observations) in enumerate(_groups(message), start=1):
        _report(builder, obr, obr_seq, observations, patient_ref, systems, default_tz)
    return builder.bundle()


def _report(
    builder: TransactionBuilder,
    obr: hl7.Segment,
    obr_seq: int,
    observations: list[tuple[int, hl7.Segment]],
    patient_ref: str,
    systems: IdentifierSystems,
    default_tz: tzinfo,
) -> None:
    order = entity_identifier(obr, 3, systems, "FILL") or entity_identifier(obr, 2, systems, "PLAC")
    if order is None:
        raise MessageInvalid(
            "OBR-3 (filler order number) and OBR-2 (placer order number) are both empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("OBR", obr_seq, 3),
        )
    obr_time = field_value(obr, 7)
    obr_effective = (
        hl7_datetime(obr_time, ErrorLocation("OBR", obr_seq, 7), default_tz) if obr_time else None
    )
    result_refs = []
    for obx_seq, obx in observations:
        observation = _observation(obx, obx_seq, patient_ref, obr_effective, default_tz)
        code = observation["code"]["coding"][0]["code"]
        set_id = field_value(obx, 1) or str(obx_seq)
        ident = {"system": order["system"], "value": f"{order['value']}/{set_id}/{code}"}
        observation["identifier"] = [ident]
        search = identifier_criteria(ident["system"], ident["value"])
        key = f"obr{obr_seq}-obx{obx_seq}"
        if observation["status"] == "corrected":
            result_refs.append(builder.conditional_update(key, observation, search))
        else:
            result_refs.append(
                builder.create(key, observation, identifier=(ident["system"], ident["value"]))
            )
    status_flag = field_value(obr, 25) or "F"
    status = _table(
        status_flag, REPORT_STATUS, "result status (OBR-25)", ErrorLocation("OBR", obr_seq, 25)
    )
    code = coded(obr, 4)
    if code is None:
        raise MessageInvalid(
            "OBR-4 (universal service identifier) is empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("OBR", obr_seq, 4),
        )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [order],
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": code,
        "subject": {"reference": patient_ref},
        "result": [{"reference": ref} for ref in result_refs],
    }
    if obr_effective:
        report["effectiveDateTime"] = obr_effective
    if issued := field_value(obr, 22):
        when = hl7_datetime(issued, ErrorLocation("OBR", obr_seq, 22), default_tz)
        if "T" in when:
            report["issued"] = when
    search = identifier_criteria(order["system"], order["value"])
    if status == "corrected":
        builder.conditional_update(f"obr{obr_seq}", report, search)
    else:
        builder.create(f"obr{obr_seq}", report, identifier=(order["system"], order["value"]))


def _observation(
    obx: hl7.Segment, seq: int, patient_ref: str, obr_effective: str | None, default_tz: tzinfo
) -> dict[str, Any]:
    code = coded(obx, 3)
    if code is None:
        raise MessageInvalid(
            "OBX-3 (observation identifier) is empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("OBX", seq, 3),
        )
    status = _table(
        field_value(obx, 11), OBX_STATUS, "result status (OBX-11)", ErrorLocation("OBX", seq, 11)
    )
    loinc = next((c["code"] for c in code["coding"] if c["system"] == LOINC), None)
    category = observation_category(loinc) if loinc else "laboratory"
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}],
        "code": code,
        "subject": {"reference": patient_ref},
    }
    if when := field_value(obx, 14):
        observation["effectiveDateTime"] = hl7_datetime(
            when, ErrorLocation("OBX", seq, 14), default_tz
        )
    elif obr_effective:
        observation["effectiveDateTime"] = obr_effective
    else:
        raise MessageInvalid(
            "no observation date/time (OBX-14 or OBR-7)",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("OBX", seq, 14),
        )
    value = _value(obx, seq)
    observation.update(value)
    if not value and status not in ("cancelled", "entered-in-error", "registered"):
        raise MessageInvalid(
            "OBX-5 (observation value) is empty",
            condition=REQUIRED_FIELD_MISSING,
            location=ErrorLocation("OBX", seq, 5),
        )
    if ranges := _reference_range(obx, value.get("valueQuantity")):
        observation["referenceRange"] = ranges
    flags = []
    for rep in range(1, 6):
        flag = field_value(obx, 8, rep)
        if flag:
            code_value = _table(
                flag, ABNORMAL_FLAGS, "abnormal flag (OBX-8)", ErrorLocation("OBX", seq, 8)
            )
            flags.append({"system": INTERPRETATION, "code": code_value})
    if flags:
        observation["interpretation"] = [{"coding": [f]} for f in flags]
    return observation
