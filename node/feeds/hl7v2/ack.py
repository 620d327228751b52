"""Build HL7 v2 acknowledgements: MSA AA / AE / AR, with an ERR segment naming the problem."""

from __future__ import annotations

from datetime import UTC, datetime

from node.feeds.hl7v2.errors import INTERNAL_ERROR, ErrorLocation, Hl7MessageError
from node.feeds.hl7v2.message import Header

__all__ = ["build_ack", "escape"]

_ESCAPE = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
DEFAULT_APPLICATION = "IPJMS"


def escape(text: str) -> str:
    """Escape HL7 delimiters and drop line breaks so free text fits in one field."""
    text = " ".join(text.split())
    return "".join(_ESCAPE.get(ch, ch) for ch in text)


def _location(loc: ErrorLocation | None) -> str:
    if loc is None:
        return ""
    parts = [loc.segment, str(loc.sequence), str(loc.field or ""), str(loc.component or "")]
    return "^".join(parts).rstrip("^")


def build_ack(
    header: Header | None,
    code: str,
    text: str = "",
    *,
    error: Hl7MessageError | None = None,
    now: datetime | None = None,
) -> str:
    """The ACK for ``header`` (None when even MSH was unreadable). ``code`` is AA, AE or AR."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code must be AA, AE or AR, not {code!r}")
    when = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    sending_app = escape(header.receiving_application) if header else DEFAULT_APPLICATION
    sending_fac = escape(header.receiving_facility) if header else ""
    receiving_app = escape(header.sending_application) if header else ""
    receiving_fac = escape(header.sending_facility) if header else ""
    event = escape(header.trigger_event) if header else ""
    control = escape(header.control_id) if header else ""
    processing = escape(header.processing_id) if header and header.processing_id else "P"
    version = escape(header.version) if header and header.version else "2.5"
    ack_control = f"A{control}"[:20] if control else "A"
    msh = (
        f"MSH|^~\\&|{sending_app}|{sending_fac}|{receiving_app}|{receiving_fac}|{when}||"
        f"ACK^{event}^ACK|{ack_control}|{processing}|{version}"
    )
    segments = [msh, f"MSA|{code}|{control}|{escape(text)[:500]}"]
    if code != "AA":
        condition = error.condition if error else INTERNAL_ERROR
        location = error.location if error else None
        reason = error.reason if error else text
        err1 = ""
        if location:
            err1 = (
                f"{location.segment}^{location.sequence}^{location.field or ''}^"
                f"{condition[0]}&{escape(condition[1])}&HL70357"
            )
        segments.append(
            f"ERR|{err1}|{_location(location)}|{condition[0]}^{escape(condition[1])}^HL70357|E"
            f"||||{escape(reason)[:500]}"
        )
    return "\r".join(segments) + "\r"
