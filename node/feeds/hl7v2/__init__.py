"""HL7 v2 feeds: ADT^A01/A03/A08 and ORU^R01 → FHIR transaction Bundles, ACKs, MLLP.

Public surface:

- ``message_to_bundle(text, options=None) -> Converted(header, bundle)`` — pure; raises
  ``MessageInvalid`` (ACK AE) or ``MessageRejected`` (ACK AR), both ``Hl7MessageError``.
- ``build_ack(header, code, text, error=...)`` — the ACK message.
- ``start_mllp_server(host, port, submit)`` / ``mllp_listener(...)`` — the node's listener;
  ``store_submitter(store)`` makes ``submit`` from a FhirStore.
- ``send_mllp(host, port, message) -> ack`` — a small blocking client.
"""

from node.feeds.hl7v2.ack import build_ack
from node.feeds.hl7v2.convert import ConversionOptions, Converted, message_to_bundle
from node.feeds.hl7v2.datatypes import IdentifierSystems
from node.feeds.hl7v2.errors import Hl7MessageError, MessageInvalid, MessageRejected
from node.feeds.hl7v2.mllp import mllp_listener, send_mllp, send_mllp_async, start_mllp_server
from node.feeds.hl7v2.receiver import MessageReceiver, store_submitter

__all__ = [
    "ConversionOptions",
    "Converted",
    "Hl7MessageError",
    "IdentifierSystems",
    "MessageInvalid",
    "MessageReceiver",
    "MessageRejected",
    "build_ack",
    "message_to_bundle",
    "mllp_listener",
    "send_mllp",
    "send_mllp_async",
    "start_mllp_server",
    "store_submitter",
]
