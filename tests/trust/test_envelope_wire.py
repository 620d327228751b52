"""The envelope header's one protobuf conversion (trust.envelope_wire): the message has exactly
the header's fields, a header survives the round trip unchanged, and any message — however
malformed — either becomes a valid header or raises EnvelopeError (never anything else)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from trust.envelope_wire import header_from_pb, header_to_pb
from trust.envelopes import HEADER_FIELDS, KINDS, EnvelopeError, EnvelopeHeader

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

headers = st.builds(
    EnvelopeHeader.new,
    kind=st.sampled_from(sorted(KINDS)),
    sender=st.from_regex(r"^[a-z][a-z0-9-]{0,20}$", fullmatch=True),
    recipient=st.from_regex(r"^[a-z][a-z0-9-]{0,20}$", fullmatch=True),
    patient_pseudonym=st.none() | st.from_regex(r"^[0-9a-f]{64}$", fullmatch=True),
    ttl=st.integers(1, 10**7).map(lambda s: dt.timedelta(seconds=s)),
    now=st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ),
)


def test_the_message_has_exactly_the_header_fields() -> None:
    assert list(pb.EnvelopeHeader.DESCRIPTOR.fields_by_name) == list(HEADER_FIELDS)
    # issue 23: purpose, classes and consent reference left the clear header for good
    assert not {"purpose", "classes", "consent_ref"} & set(HEADER_FIELDS)


@given(headers)
def test_a_header_survives_the_round_trip(header: EnvelopeHeader) -> None:
    message = header_to_pb(header)
    back = header_from_pb(pb.EnvelopeHeader.FromString(message.SerializeToString()))
    assert back == header
    assert back.canonical() == header.canonical()  # what the signature covers is unchanged


def test_absent_pseudonym_is_empty_on_the_wire() -> None:
    header = EnvelopeHeader.new(kind="record-query", sender="clinic-b", recipient="hosp-a", now=NOW)
    message = header_to_pb(header)
    assert message.patient_pseudonym == ""
    assert message.created_at == int(NOW.timestamp())
    assert header_from_pb(message).patient_pseudonym is None


@given(
    envelope_id=st.sampled_from(["", "x", str(uuid.uuid4()), str(uuid.uuid4()).upper()]),
    kind=st.text(max_size=40),
    sender=st.text(max_size=70),
    patient_pseudonym=st.text(max_size=300),
    created_at=st.integers(-(2**63), 2**63 - 1),
    expires_at=st.integers(-(2**63), 2**63 - 1),
)
def test_any_message_is_a_valid_header_or_an_envelope_error(**fields: object) -> None:
    message = pb.EnvelopeHeader(recipient="clinic-b", **fields)  # type: ignore[arg-type]
    try:
        header = header_from_pb(message)
    except EnvelopeError:
        return
    assert header_to_pb(header) == message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("envelope_id", "not-a-uuid", "envelope_id"),
        ("sender", "", "sender"),
        ("created_at", 2**62, "created_at is out of range"),
        ("expires_at", 0, "expires_at must be after created_at"),
    ],
)
def test_a_malformed_message_names_the_field(field: str, value: object, message: str) -> None:
    record = EnvelopeHeader.new(
        kind="referral", sender="hosp-a", recipient="clinic-b", now=NOW
    ).to_record()
    record[field] = value
    with pytest.raises(EnvelopeError, match=message):
        header_from_pb(pb.EnvelopeHeader(**record))
