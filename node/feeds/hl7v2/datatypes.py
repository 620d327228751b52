"""HL7 v2 data types → FHIR data types (TS/DTM, CX, XPN, XAD, CE/CWE), following the
HL7 v2-to-FHIR mapping guidance. Pure functions; errors name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import quote

import hl7

from node.feeds.hl7v2.errors import (
    DATA_TYPE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    ErrorLocation,
    MessageInvalid,
)
from node.feeds.hl7v2.message import field_value
from node.feeds.terminology import LOINC, SNOMED, UCUM
from node.identity import NATIONAL_ID_SYSTEM

__all__ = [
    "IdentifierSystems",
    "coded",
    "entity_identifier",
    "gender",
    "hl7_datetime",
    "identifier",
    "xad_address",
    "xpn_name",
]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOCAL_SID_BASE = "https://ipjms.example.org/fhir/sid/hl7v2"
LOCAL_CODE_BASE = "https://ipjms.example.org/fhir/CodeSystem/hl7v2"


@dataclass(frozen=True)
class IdentifierSystems:
    """How CX assigning authorities (CX-4) and identifier types (CX-5) become FHIR systems.

    Order: CX-5 in ``national_types`` or CX-4 namespace in ``authorities`` mapping to the national
    system → NATIONAL_ID_SYSTEM; CX-4 namespace in ``authorities`` → that system; CX-4 universal id
    of type ISO → ``urn:oid:<id>``, of type URI → the URI; otherwise
    ``https://ipjms.example.org/fhir/sid/hl7v2/<authority>/<type>``.
    """

    authorities: dict[str, str] = field(
        default_factory=lambda: {
            "NATIONAL": NATIONAL_ID_SYSTEM,
            "NID": NATIONAL_ID_SYSTEM,
            "SSA": "http://hl7.org/fhir/sid/us-ssn",
        }
    )
    national_types: frozenset[str] = frozenset({"NI", "NN"})

    def system(self, namespace: str, universal_id: str, universal_type: str, id_type: str) -> str:
        if id_type in self.national_types:
            return NATIONAL_ID_SYSTEM
        if namespace in self.authorities:
            return self.authorities[namespace]
        if universal_id and universal_type.upper() == "ISO":
            return f"urn:oid:{universal_id}"
        if universal_id and universal_type.upper() == "URI":
            return universal_id
        authority = quote(namespace or universal_id or "local", safe="")
        return f"{LOCAL_SID_BASE}/{authority}/{quote(id_type or 'PI', safe='')}"


def identifier(
    segment: hl7.Segment, number: int, rep: int, systems: IdentifierSystems
) -> dict[str, Any] | None:
    """CX (or EI) at SEG-number~rep → FHIR Identifier, None when the repetition is empty."""
    value = field_value(segment, number, rep, 1)
    if not value:
        return None
    id_type = field_value(segment, number, rep, 5)
    system = systems.system(
        namespace=field_value(segment, number, rep, 4, 1),
        universal_id=field_value(segment, number, rep, 4, 2),
        universal_type=field_value(segment, number, rep, 4, 3),
        id_type=id_type,
    )
    out: dict[str, Any] = {"system": system, "value": value}
    if id_type:
        out["type"] = {"coding": [{"system": V2_0203, "code": id_type}]}
    return out


def entity_identifier(
    segment: hl7.Segment, number: int, systems: IdentifierSystems, id_type: str
) -> dict[str, Any] | None:
    """EI (entity id^namespace^universal id^universal id type), e.g. an order number."""
    value = field_value(segment, number, 1, 1)
    if not value:
        return None
    system = systems.system(
        namespace=field_value(segment, number, 1, 2),
        universal_id=field_value(segment, number, 1, 3),
        universal_type=field_value(segment, number, 1, 4),
        id_type=id_type,
    )
    return {
        "system": system,
        "value": value,
        "type": {"coding": [{"system": V2_0203, "code": id_type}]},
    }


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


def hl7_datetime(value: str, location: ErrorLocation, default_tz: tzinfo = UTC) -> str:
    """TS/DTM → FHIR date or dateTime. Times without an offset are taken in ``default_tz``."""
    match = _TS.match(value.strip())
    if not match:
        raise MessageInvalid(
            f"{value!r} is not an HL7 timestamp (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])",
            condition=DATA_TYPE_ERROR,
            location=location,
        )
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        if hour is None:
            datetime(int(year), int(month or 1), int(day or 1))
            return "-".join(part for part in (year, month, day) if part)
        tz = default_tz
        if offset:
            sign = 1 if offset[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        when = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour),
            int(minute or 0),
            int(second or 0),
            int(float(fraction or "0") * 1_000_000),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise MessageInvalid(
            f"{value!r} is not a valid date/time: {exc}",
            condition=DATA_TYPE_ERROR,
            location=location,
        ) from exc
    text = when.isoformat()
    return text.replace("+00:00", "Z")


def xpn_name(segment: hl7.Segment, number: int, rep: int) -> dict[str, Any] | None:
    """XPN: family^given^middle^suffix^prefix^degree^use → HumanName."""
    family = field_value(segment, number, rep, 1)
    given = [
        g for g in (field_value(segment, number, rep, 2), field_value(segment, number, rep, 3)) if g
    ]
    if not family and not given:
        return None
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if suffix := field_value(segment, number, rep, 4):
        name["suffix"] = [suffix]
    if prefix := field_value(segment, number, rep, 5):
        name["prefix"] = [prefix]
    use = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous"}
    if code := use.get(field_value(segment, number, rep, 7)):
        name["use"] = code
    return name


def xad_address(segment: hl7.Segment, number: int, rep: int) -> dict[str, Any] | None:
    """XAD: street^other^city^state^zip^country → Address."""
    parts = [field_value(segment, number, rep, c) for c in range(1, 7)]
    street, other, city, state, postal, country = parts
    if not any(parts):
        return None
    address: dict[str, Any] = {}
    lines = [p for p in (street, other) if p]
    if lines:
        address["line"] = lines
    for key, value in (
        ("city", city),
        ("state", state),
        ("postalCode", postal),
        ("country", country),
    ):
        if value:
            address[key] = value
    return address


_GENDERS = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}


def gender(value: str, location: ErrorLocation) -> str | None:
    if not value:
        return None
    if value.upper() not in _GENDERS:
        raise MessageInvalid(
            f"administrative sex {value!r} is not in HL7 table 0001 (M, F, O, A, U, N)",
            condition=TABLE_VALUE_NOT_FOUND,
            location=location,
        )
    return _GENDERS[value.upper()]


_CODE_SYSTEMS = {"LN": LOINC, "SCT": SNOMED, "SNM": SNOMED, "UCUM": UCUM}


def code_system(name: str) -> str:
    return _CODE_SYSTEMS.get(name.upper(), f"{LOCAL_CODE_BASE}/{quote(name or 'L', safe='')}")


def coded(segment: hl7.Segment, number: int, rep: int = 1) -> dict[str, Any] | None:
    """CE/CWE: id^text^system^alt id^alt text^alt system → CodeableConcept (LOINC first)."""
    codings = []
    for first in (1, 4):
        code = field_value(segment, number, rep, first)
        if not code:
            continue
        coding: dict[str, Any] = {
            "system": code_system(field_value(segment, number, rep, first + 2)),
            "code": code,
        }
        if display := field_value(segment, number, rep, first + 1):
            coding["display"] = display
        codings.append(coding)
    if not codings:
        return None
    codings.sort(key=lambda c: c["system"] != LOINC)
    concept: dict[str, Any] = {"coding": codings}
    if text := field_value(segment, number, rep, 2):
        concept["text"] = text
    return concept
