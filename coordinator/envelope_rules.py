"""Pure checks on an envelope header before anything is queued (no I/O, unit-tested).

The coordinator cannot read payloads, so everything it enforces is on the clear header: who sends
to whom, for which patient pseudonym and purpose, declaring which data classes, until when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coordinator.errors import ExchangeError

__all__ = [
    "Header",
    "KINDS",
    "PURPOSES",
    "DATA_KINDS",
    "check_header",
    "check_size",
    "data_recipient",
    "PSEUDONYM_PATTERN",
]

KINDS = frozenset(
    {"referral", "consultation", "task-update", "advice", "record-query", "record-answer"}
)
# Kinds whose payload discloses clinical data to someone (consent is always consulted for these;
# for the others too, see data_recipient).
DATA_KINDS = frozenset({"referral", "consultation", "advice", "record-answer"})
PURPOSES = frozenset({"TREAT", "ETREAT", "HRESCH"})

_ENVELOPE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,63}$")
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PSEUDONYM_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_CLASS = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
MAX_CLOCK_SKEW = 300  # seconds a sender's clock may run ahead


@dataclass(frozen=True)
class Header:
    envelope_id: str
    kind: str
    sender: str
    recipient: str
    patient_pseudonym: str
    purpose: str
    classes: tuple[str, ...]
    consent_ref: str
    created_at: int
    expires_at: int


def check_header(header: Header, *, caller: str, now: float, max_ttl: int) -> None:
    """Raise :class:`ExchangeError` naming the first problem; return quietly when acceptable."""
    if not _ENVELOPE_ID.match(header.envelope_id):
        raise ExchangeError(
            "INVALID_ARGUMENT", "envelope_id must be 8-64 characters [A-Za-z0-9._:-]"
        )
    if header.kind not in KINDS:
        raise ExchangeError(
            "INVALID_ARGUMENT",
            f"unknown envelope kind {header.kind!r}; expected one of {sorted(KINDS)}",
        )
    if header.sender != caller:
        raise ExchangeError(
            "PERMISSION_DENIED",
            f"header.sender {header.sender!r} is not the calling organisation {caller!r}",
        )
    if not _ORG_ID.match(header.recipient):
        raise ExchangeError("INVALID_ARGUMENT", "header.recipient is missing or malformed")
    if header.recipient == caller:
        raise ExchangeError("INVALID_ARGUMENT", "an organisation cannot send to itself")
    if not PSEUDONYM_PATTERN.match(header.patient_pseudonym):
        raise ExchangeError(
            "INVALID_ARGUMENT", "header.patient_pseudonym must be a 64-hex-digit pseudonym"
        )
    if header.purpose not in PURPOSES:
        raise ExchangeError(
            "INVALID_ARGUMENT",
            f"unknown purpose {header.purpose!r}; expected one of {sorted(PURPOSES)}",
        )
    bad = [c for c in header.classes if not _CLASS.match(c)]
    if bad:
        raise ExchangeError("INVALID_ARGUMENT", f"malformed data classes: {bad[:5]}")
    if len(set(header.classes)) != len(header.classes):
        raise ExchangeError("INVALID_ARGUMENT", "duplicate data classes in header")
    if header.kind in DATA_KINDS and not header.classes:
        raise ExchangeError(
            "INVALID_ARGUMENT", f"a {header.kind} envelope must declare its classes"
        )
    if header.created_at <= 0 or header.expires_at <= 0:
        raise ExchangeError("INVALID_ARGUMENT", "created_at and expires_at are required")
    if header.created_at > now + MAX_CLOCK_SKEW:
        raise ExchangeError("INVALID_ARGUMENT", "created_at lies in the future")
    if header.expires_at <= header.created_at:
        raise ExchangeError("INVALID_ARGUMENT", "expires_at must be after created_at")
    if header.expires_at <= now:
        raise ExchangeError(
            "FAILED_PRECONDITION", f"envelope {header.envelope_id} expired before it was sent"
        )
    if header.expires_at - now > max_ttl:
        raise ExchangeError(
            "INVALID_ARGUMENT", f"expires_at is more than {max_ttl} seconds away (maximum)"
        )


def check_size(sealed: bytes, *, max_bytes: int) -> None:
    if not sealed:
        raise ExchangeError("INVALID_ARGUMENT", "the sealed payload is empty")
    if len(sealed) > max_bytes:
        raise ExchangeError(
            "RESOURCE_EXHAUSTED",
            f"sealed payload of {len(sealed)} bytes exceeds the maximum of {max_bytes} bytes",
        )


def data_recipient(header: Header) -> str:
    """Who receives patient data because of this envelope — the party consent must permit.

    A record query discloses nothing itself; it asks the holder (recipient) to disclose to the
    sender, so the consent question is about the sender. Everything else discloses to the
    recipient.
    """
    return header.sender if header.kind == "record-query" else header.recipient


def check_sealed_matches(header: Header, sealed: bytes) -> None:
    """The sealed envelope must parse and carry exactly the clear header it is routed by (the
    coordinator can read a sealed envelope's header without any key, never its payload)."""
    from trust.envelopes import EnvelopeError, SealedEnvelope

    try:
        inner = SealedEnvelope.from_bytes(sealed).header
    except (EnvelopeError, ValueError) as exc:
        raise ExchangeError("INVALID_ARGUMENT", f"malformed sealed envelope: {exc}") from None
    mismatched = [
        name
        for name, ours, theirs in (
            ("envelope_id", header.envelope_id, inner.envelope_id),
            ("kind", header.kind, inner.kind),
            ("sender", header.sender, inner.sender),
            ("recipient", header.recipient, inner.recipient),
            ("patient_pseudonym", header.patient_pseudonym, inner.patient_pseudonym or ""),
            ("purpose", header.purpose, inner.purpose),
            ("classes", header.classes, tuple(inner.classes)),
            ("consent_ref", header.consent_ref, inner.consent_ref or ""),
            ("created_at", header.created_at, int(inner.created_at.timestamp())),
            ("expires_at", header.expires_at, int(inner.expires_at.timestamp())),
        )
        if ours != theirs
    ]
    if mismatched:
        raise ExchangeError(
            "INVALID_ARGUMENT", f"clear header disagrees with the sealed envelope on {mismatched}"
        )
