"""Typed errors for HL7 v2 input, carrying what the ACK must say (HL7 table 0357 codes)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATA_TYPE_ERROR",
    "INTERNAL_ERROR",
    "REQUIRED_FIELD_MISSING",
    "SEGMENT_SEQUENCE_ERROR",
    "TABLE_VALUE_NOT_FOUND",
    "UNSUPPORTED_EVENT",
    "UNSUPPORTED_MESSAGE_TYPE",
    "UNSUPPORTED_PROCESSING_ID",
    "UNSUPPORTED_VERSION",
    "ErrorLocation",
    "Hl7MessageError",
    "MessageInvalid",
    "MessageRejected",
]

# HL7 table 0357 (message error condition codes) → short text
SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
REQUIRED_FIELD_MISSING = ("101", "Required field missing")
DATA_TYPE_ERROR = ("102", "Data type error")
TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNSUPPORTED_EVENT = ("201", "Unsupported event code")
UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
INTERNAL_ERROR = ("207", "Application internal error")


@dataclass(frozen=True)
class ErrorLocation:
    """Where the problem is: segment id, its 1-based position among same-id segments, field."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        text = f"{self.segment}"
        if self.sequence != 1:
            text += f"[{self.sequence}]"
        if self.field is not None:
            text += f"-{self.field}"
        if self.component is not None:
            text += f".{self.component}"
        return text


class Hl7MessageError(Exception):
    """A message the node will not store. ``ack_code`` is AE (error) or AR (reject)."""

    ack_code = "AE"

    def __init__(
        self,
        reason: str,
        *,
        condition: tuple[str, str] = DATA_TYPE_ERROR,
        location: ErrorLocation | None = None,
    ) -> None:
        self.reason = reason
        self.condition = condition
        self.location = location
        prefix = f"{location}: " if location else ""
        super().__init__(f"{prefix}{reason}")


class MessageInvalid(Hl7MessageError):
    """The content is wrong (missing PID-3, bad number or date, …): ACK AE."""

    ack_code = "AE"


class MessageRejected(Hl7MessageError):
    """Bad MSH, or a message type / version / processing id the node does not take: ACK AR."""

    ack_code = "AR"
