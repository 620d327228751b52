"""Pure checks on an envelope header before anything is queued (no I/O, unit-tested).

The coordinator cannot read payloads, so everything it enforces is on the clear header: which
kind, who sends to whom, for which (routing) patient pseudonym, until when. It does not see why
the data goes or which data (issue 23): purpose and classes are inside, in the registry's decision
bound to the envelope id, which the consent gate has re-decided (``coordinator.consent_gate``).
The header is :class:`trust.envelopes.EnvelopeHeader` (read from the gRPC message by
``trust.envelope_wire``, which already checks its form); the kinds are ``trust.envelopes.KINDS``
— the list is not repeated here. A lookup, likewise, names only a pseudonym and the lookup id its
registry decision is bound to.
"""

from __future__ import annotations

import re

from coordinator.errors import ExchangeError
from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from trust.envelope_wire import header_from_pb
from trust.envelopes import (
    HEADER_FIELDS,
    KINDS,
    MAX_CLOCK_SKEW,
    MAX_LIFETIME,
    EnvelopeError,
    EnvelopeHeader,
    SealedEnvelope,
)

__all__ = [
    "read_header",
    "check_header",
    "check_lookup",
    "check_size",
    "check_sealed_matches",
    "data_recipient",
    "PSEUDONYM_PATTERN",
]

# 64 hex digits (the linkage-key HMAC of older regions) or v<key version>.<64 hex> (the
# authority's OPRF, trust.pseudonym.OPRF_PSEUDONYM_PATTERN)
PSEUDONYM_PATTERN = re.compile(r"^(v[1-9][0-9]{0,5}\.)?[0-9a-f]{64}$")


def read_header(message: pb.EnvelopeHeader) -> EnvelopeHeader:
    """The clear header of a Send, as the one header type; malformed → ``INVALID_ARGUMENT``
    (the envelope id, organisation ids and times are checked by the type itself)."""
    try:
        return header_from_pb(message)
    except EnvelopeError as exc:
        raise ExchangeError("INVALID_ARGUMENT", f"malformed envelope header: {exc}") from None


def check_header(header: EnvelopeHeader, *, caller: str, now: float, max_ttl: int) -> None:
    """Raise :class:`ExchangeError` naming the first problem; return quietly when acceptable."""
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
    if header.recipient == caller:
        raise ExchangeError("INVALID_ARGUMENT", "an organisation cannot send to itself")
    if not PSEUDONYM_PATTERN.match(header.patient_pseudonym or ""):
        raise ExchangeError(
            "INVALID_ARGUMENT",
            "header.patient_pseudonym must be a pseudonym (64 hex digits, or v<N>.<64 hex>)",
        )
    created_at, expires_at = header.created_at.timestamp(), header.expires_at.timestamp()
    if created_at <= 0 or expires_at <= 0:
        raise ExchangeError("INVALID_ARGUMENT", "created_at and expires_at are required")
    # the same bounds the receiver applies (trust.envelopes.check_times)
    if created_at > now + MAX_CLOCK_SKEW.total_seconds():
        raise ExchangeError("INVALID_ARGUMENT", "created_at lies in the future")
    if expires_at - created_at > MAX_LIFETIME.total_seconds():
        raise ExchangeError(
            "INVALID_ARGUMENT", f"envelope lifetime exceeds {MAX_LIFETIME.days} days (maximum)"
        )
    if expires_at <= now:
        raise ExchangeError(
            "FAILED_PRECONDITION", f"envelope {header.envelope_id} expired before it was sent"
        )
    if expires_at - now > max_ttl:
        raise ExchangeError(
            "INVALID_ARGUMENT", f"expires_at is more than {max_ttl} seconds away (maximum)"
        )


_LOOKUP_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_lookup(pseudonym: str, lookup_id: str) -> None:
    """A record-locator lookup: a pseudonym and the id of the lookup the caller's registry
    decision is bound to (purpose and classes are in that decision, not in the request)."""
    if not PSEUDONYM_PATTERN.match(pseudonym):
        raise ExchangeError(
            "INVALID_ARGUMENT",
            "patient_pseudonym must be a pseudonym (64 hex digits, or v<N>.<64 hex>)",
        )
    if not _LOOKUP_ID.match(lookup_id):
        raise ExchangeError(
            "INVALID_ARGUMENT",
            "a lookup names the lookup id its consent decision is bound to (lookup_id, a "
            "lowercase UUID)",
        )


def check_size(sealed: bytes, *, max_bytes: int) -> None:
    if not sealed:
        raise ExchangeError("INVALID_ARGUMENT", "the sealed payload is empty")
    if len(sealed) > max_bytes:
        raise ExchangeError(
            "RESOURCE_EXHAUSTED",
            f"sealed payload of {len(sealed)} bytes exceeds the maximum of {max_bytes} bytes",
        )


def data_recipient(header: EnvelopeHeader) -> str:
    """Who receives patient data because of this envelope — the party consent must permit.

    A record query discloses nothing itself; it asks the holder (recipient) to disclose to the
    sender, so the consent question is about the sender. Everything else discloses to the
    recipient.
    """
    return header.sender if header.kind == "record-query" else header.recipient


def check_sealed_matches(header: EnvelopeHeader, sealed: bytes) -> None:
    """The sealed envelope must parse and carry exactly the clear header it is routed by (the
    coordinator can read a sealed envelope's header without any key, never its payload)."""
    try:
        inner = SealedEnvelope.from_bytes(sealed).header
    except (EnvelopeError, ValueError) as exc:
        raise ExchangeError("INVALID_ARGUMENT", f"malformed sealed envelope: {exc}") from None
    mismatched = [name for name in HEADER_FIELDS if getattr(header, name) != getattr(inner, name)]
    if mismatched:
        raise ExchangeError(
            "INVALID_ARGUMENT", f"clear header disagrees with the sealed envelope on {mismatched}"
        )
