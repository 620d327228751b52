"""Parse an HL7 v2 message with python-hl7 and check its header (MSH)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import hl7
from hl7.exceptions import ParseException

from node.feeds.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION,
    ErrorLocation,
    MessageRejected,
)

__all__ = [
    "SUPPORTED_PROCESSING_IDS",
    "SUPPORTED_VERSIONS",
    "Header",
    "Message",
    "field_value",
    "header_or_none",
    "parse_message",
]

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
SUPPORTED_PROCESSING_IDS = ("P", "T")  # production, training; D (debugging) is refused


@dataclass(frozen=True)
class Header:
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # e.g. ORU
    trigger_event: str  # e.g. R01
    control_id: str
    processing_id: str
    version: str


class Message:
    """A parsed message with safe field access: missing parts read as ''."""

    def __init__(self, parsed: hl7.Message, header: Header) -> None:
        self.parsed = parsed
        self.header = header
        self.segment_ids = [str(seg[0]).strip() for seg in parsed]

    def segments(self, seg_id: str) -> list[hl7.Segment]:
        return [
            seg for seg, name in zip(self.parsed, self.segment_ids, strict=True) if name == seg_id
        ]

    def get(
        self, segment: hl7.Segment, field: int, rep: int = 1, comp: int = 1, sub: int = 1
    ) -> str:
        return field_value(segment, field, rep, comp, sub)


def field_value(segment: hl7.Segment, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """SEG-field.rep.comp.sub as text (HL7 escapes resolved), '' when absent."""
    try:
        if field >= len(segment):
            return ""
        value = segment[field]
        for index in (rep, comp, sub):
            if isinstance(value, str):
                return value if index == 1 else ""
            if index > len(value):
                return ""
            value = value[index - 1]
        while not isinstance(value, str):
            if not value:
                return ""
            value = value[0]
        return _unescape(value)
    except (IndexError, TypeError):
        return ""


_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\([FSTRE])\\", lambda m: _ESCAPES[m.group(1)], value)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c ")
    return "\r".join(line for line in text.split("\r") if line.strip())


def parse_message(text: str) -> Message:
    """Parse and check MSH. Raises MessageRejected (ACK AR) for header problems."""
    text = _normalise(text)
    if not text.startswith("MSH") or len(text) < 8:
        raise MessageRejected(
            "message does not start with an MSH segment",
            condition=SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("MSH"),
        )
    try:
        parsed = hl7.parse(text)
    except (ParseException, ValueError, IndexError) as exc:
        raise MessageRejected(
            f"unparseable message header: {exc}",
            condition=SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("MSH"),
        ) from exc
    header = _header(parsed.segments("MSH")[0])
    for number, value in (
        (9, header.message_type),
        (10, header.control_id),
        (11, header.processing_id),
        (12, header.version),
    ):
        if not value:
            raise MessageRejected(
                f"MSH-{number} is empty",
                condition=REQUIRED_FIELD_MISSING,
                location=ErrorLocation("MSH", field=number),
            )
    if header.version not in SUPPORTED_VERSIONS:
        raise MessageRejected(
            f"HL7 version {header.version!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
            condition=UNSUPPORTED_VERSION,
            location=ErrorLocation("MSH", field=12),
        )
    if header.processing_id not in SUPPORTED_PROCESSING_IDS:
        raise MessageRejected(
            f"processing id {header.processing_id!r} is not accepted (use P or T)",
            condition=UNSUPPORTED_PROCESSING_ID,
            location=ErrorLocation("MSH", field=11),
        )
    if header.message_type not in ("ADT", "ORU"):
        raise MessageRejected(
            f"message type {header.message_type!r} is not supported (ADT, ORU)",
            condition=UNSUPPORTED_MESSAGE_TYPE,
            location=ErrorLocation("MSH", field=9),
        )
    return Message(parsed, header)


def header_or_none(text: str) -> Header | None:
    """Best-effort header of a message that failed to parse, so the ACK can echo MSH-10."""
    try:
        return _header(hl7.parse(_normalise(text)).segments("MSH")[0])
    except Exception:  # any failure just means "no header to echo"
        return None


def _header(msh: hl7.Segment) -> Header:
    return Header(
        sending_application=field_value(msh, 3),
        sending_facility=field_value(msh, 4),
        receiving_application=field_value(msh, 5),
        receiving_facility=field_value(msh, 6),
        message_type=field_value(msh, 9, 1, 1),
        trigger_event=field_value(msh, 9, 1, 2),
        control_id=field_value(msh, 10),
        processing_id=field_value(msh, 11, 1, 1),
        version=field_value(msh, 12, 1, 1),
    )
