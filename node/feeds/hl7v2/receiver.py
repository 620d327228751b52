"""What the node does with one received HL7 v2 message: convert, submit, answer with an ACK.

Pure of sockets: ``MessageReceiver.receive(payload) -> ACK text`` is what the MLLP server calls
for every frame. ``submit(bundle, writer)`` must be all-or-nothing (the node passes
``store.transaction`` run in a thread); if it raises, the ACK is AE and nothing was stored.
``writer`` names the feed in the store's commit events: ``feed:hl7v2/<MSH-3 sending application>``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from node.feeds.hl7v2.ack import build_ack
from node.feeds.hl7v2.convert import ConversionOptions, message_to_bundle
from node.feeds.hl7v2.errors import INTERNAL_ERROR, Hl7MessageError, MessageRejected
from node.feeds.hl7v2.message import header_or_none
from servicekit.outcome import FhirError

__all__ = [
    "MessageReceiver",
    "Submit",
    "TransactionStore",
    "decode_payload",
    "feed_writer",
    "store_submitter",
]

log = logging.getLogger("ipjms.node.hl7v2")

Submit = Callable[[dict[str, Any], str], Awaitable[None]]


class TransactionStore(Protocol):
    def transaction(self, bundle: dict[str, Any], *, writer: str) -> dict[str, Any]: ...


def store_submitter(store: TransactionStore) -> Submit:
    """``submit`` for a FhirStore: run its atomic ``transaction`` in a worker thread."""

    async def submit(bundle: dict[str, Any], writer: str) -> None:
        await asyncio.to_thread(lambda: store.transaction(bundle, writer=writer))

    return submit


def feed_writer(sending_application: str) -> str:
    """The writer of the commit events of a message from ``sending_application`` (MSH-3)."""
    return f"feed:hl7v2/{sending_application or '?'}"


def decode_payload(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")  # ISO 8859-1 is HL7 v2's usual single-byte charset


class MessageReceiver:
    def __init__(
        self,
        submit: Submit,
        *,
        options: ConversionOptions | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.submit = submit
        self.options = options or ConversionOptions()
        self.clock = clock

    def _now(self) -> datetime | None:
        return self.clock() if self.clock else None

    async def receive(self, payload: bytes) -> str:
        text = decode_payload(payload)
        try:
            converted = message_to_bundle(text, self.options)
        except Hl7MessageError as exc:
            header = header_or_none(text)
            log.info(
                "hl7v2 message %s refused (%s %s at %s)",
                header.control_id if header else "?",
                exc.ack_code,
                exc.condition[0],
                exc.location,
            )
            return build_ack(header, exc.ack_code, exc.reason, error=exc, now=self._now())
        header = converted.header
        entries = len(converted.bundle["entry"])
        try:
            await self.submit(converted.bundle, feed_writer(header.sending_application))
        except FhirError as exc:
            log.info("hl7v2 message %s not stored: store refused it", header.control_id)
            error = Hl7MessageError(
                f"the record store refused the message: {exc}", condition=INTERNAL_ERROR
            )
            return build_ack(header, "AE", error.reason, error=error, now=self._now())
        except Exception as exc:  # the sender must get an answer whatever happened
            log.error("hl7v2 message %s not stored: %s", header.control_id, type(exc).__name__)
            error = Hl7MessageError("internal error while storing", condition=INTERNAL_ERROR)
            return build_ack(header, "AE", error.reason, error=error, now=self._now())
        log.info(
            "hl7v2 %s^%s %s stored (%d entries)",
            header.message_type,
            header.trigger_event,
            header.control_id,
            entries,
        )
        return build_ack(header, "AA", f"stored {entries} entries", now=self._now())

    def oversize(self, limit: int) -> str:
        error = MessageRejected(f"message larger than {limit} bytes was discarded")
        return build_ack(None, "AR", error.reason, error=error, now=self._now())
