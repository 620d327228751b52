"""One entry point: HL7 v2 message text → (header, FHIR transaction Bundle), or a typed error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any

from node.feeds.hl7v2.adt import adt_to_bundle
from node.feeds.hl7v2.datatypes import IdentifierSystems
from node.feeds.hl7v2.message import Header, parse_message
from node.feeds.hl7v2.oru import oru_to_bundle

__all__ = ["ConversionOptions", "Converted", "message_to_bundle"]


@dataclass(frozen=True)
class ConversionOptions:
    systems: IdentifierSystems = field(default_factory=IdentifierSystems)
    default_tz: tzinfo = UTC  # zone of HL7 timestamps that carry no offset


@dataclass(frozen=True)
class Converted:
    header: Header
    bundle: dict[str, Any]


def message_to_bundle(text: str, options: ConversionOptions | None = None) -> Converted:
    """Raises MessageRejected (ACK AR) or MessageInvalid (ACK AE) with the reason and location."""
    opts = options or ConversionOptions()
    message = parse_message(text)
    if message.header.message_type == "ADT":
        bundle = adt_to_bundle(message, opts.systems, opts.default_tz)
    else:
        bundle = oru_to_bundle(message, opts.systems, opts.default_tz)
    return Converted(message.header, bundle)
