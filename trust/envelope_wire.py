"""The envelope header on the gRPC wire: the one conversion between
:class:`trust.envelopes.EnvelopeHeader` and the ``ipjms.exchange.v1.EnvelopeHeader`` message.

The node (sending) and the coordinator (receiving, delivering) both convert here. The message
has exactly the header's fields in its flat record form (:meth:`EnvelopeHeader.to_record`: unix
seconds, ``""`` for no pseudonym); a test checks the two field lists agree. Purpose, classes
and consent reference are not among them: they travel inside the sealed payload (issue 23).

This is the only module of ``trust`` that imports ``protos`` (the generated stubs, which import
nothing of ours): the header is trust's contract in both of its encodings — canonical JSON inside
the sealed bytes, protobuf in clear beside them — so a change to it is made in one package.
"""

from __future__ import annotations

from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from trust.envelopes import HEADER_FIELDS, EnvelopeHeader

__all__ = ["header_to_pb", "header_from_pb"]


def header_to_pb(header: EnvelopeHeader) -> pb.EnvelopeHeader:
    return pb.EnvelopeHeader(**header.to_record())


def header_from_pb(message: pb.EnvelopeHeader) -> EnvelopeHeader:
    """Raises :class:`trust.envelopes.EnvelopeError` naming the first malformed field."""
    return EnvelopeHeader.from_record({name: getattr(message, name) for name in HEADER_FIELDS})
