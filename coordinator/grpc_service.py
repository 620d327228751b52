"""The gRPC servicers (Directory, RecordLocator, Exchange): the thin shell around the queue,
directory, locator, consent gate and audit. ExchangeError → gRPC status happens here, once.

Nothing in this module reads or logs payloads: it handles the clear header and opaque bytes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from coordinator.consent_gate import ConsentGate, GateDecision
from coordinator.directory import Directory, OrgRecord
from coordinator.envelope_rules import (
    check_header,
    check_lookup,
    check_sealed_matches,
    check_size,
    read_header,
)
from coordinator.errors import ExchangeError
from coordinator.locator import RecordLocator
from coordinator.notifier import InboxNotifier
from coordinator.peers import PeerAuthenticator
from coordinator.queue import Also, EnvelopeQueue, QueuedEnvelope
from coordinator.routing_audit import RoutingAuditor
from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from protos.ipjms.exchange.v1 import exchange_pb2_grpc as pb_grpc
from trust.envelope_wire import header_to_pb

__all__ = ["ExchangeLimits", "Services", "add_servicers"]

log = logging.getLogger("ipjms.coordinator")
# An open Inbox stream marks its org seen this often (directory.ONLINE_WINDOW is 20 s).
TOUCH_EVERY = 5.0
# An idle stream wakes this long after a lease runs out (claims need lease_until < now).
LEASE_SLACK = 0.05
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ExchangeLimits:
    max_envelope_bytes: int = 8 * 1024 * 1024
    max_ttl_seconds: int = 30 * 24 * 3600
    rate_per_minute: int = 600
    poll_interval: float = 1.0  # an idle stream's re-check of a shared (PostgreSQL) queue
    default_batch: int = 16


@dataclass
class Services:
    directory: Directory
    locator: RecordLocator
    queue: EnvelopeQueue
    peers: PeerAuthenticator
    gate: ConsentGate
    auditor: RoutingAuditor
    notifier: InboxNotifier
    limits: ExchangeLimits


def _abort(context: grpc.ServicerContext, exc: ExchangeError) -> None:
    code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)
    context.abort(code, exc.message)


def _unary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ExchangeError as exc:
            log.info("%s refused: %s %s", method.__name__, exc.code, exc.message)
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]


def _streaming(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
        except ExchangeError as exc:
            log.info("%s refused: %s %s", method.__name__, exc.code, exc.message)
            _abort(context, exc)

    return wrapper  # type: ignore[return-value]


def org_to_pb(org: OrgRecord) -> pb.Organisation:
    return pb.Organisation(
        org_id=org.org_id,
        name=org.name,
        level=org.level,
        endpoints=[
            pb.Endpoint(kind=e.get("kind", ""), url=e.get("url", "")) for e in org.endpoints
        ],
        encryption_certificate=org.encryption_certificate,
        signing_certificate=org.signing_certificate,
        cert_fingerprints=org.cert_fingerprints,
        revoked=org.revoked,
        online=org.online(),
    )


class _Base:
    def __init__(self, services: Services) -> None:
        self.s = services

    def caller(self, context: grpc.ServicerContext) -> OrgRecord:
        certs = context.auth_context().get("x509_pem_cert") or [None]
        return self.s.peers.identify(certs[0])


class DirectoryServicer(_Base, pb_grpc.DirectoryServicer):
    @_unary
    def ListOrganisations(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.caller(context)
        orgs = self.s.directory.list(request.level)
        return pb.ListOrganisationsResponse(organisations=[org_to_pb(o) for o in orgs])

    @_unary
    def GetOrganisation(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.caller(context)
        org = self.s.directory.get(request.org_id)
        if org is None:
            raise ExchangeError("NOT_FOUND", f"no organisation {request.org_id!r} in the directory")
        return org_to_pb(org)


class LocatorServicer(_Base, pb_grpc.RecordLocatorServicer):
    @_unary
    def Publish(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        org = self.caller(context)
        added = self.s.locator.publish(
            org.org_id, request.patient_pseudonyms, replace=request.replace
        )
        return pb.PublishResponse(published=added, total_held=self.s.locator.held_count(org.org_id))

    @_unary
    def Lookup(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Where a patient is treated is itself a disclosure: the lookup names the lookup id
        the caller's registry decision is bound to (no purpose, no classes: issue 23), passes
        the consent gate on that decision, and is audited either way."""
        org = self.caller(context)
        pseudo, lookup_id = request.patient_pseudonym, request.lookup_id
        check_lookup(pseudo, lookup_id)
        decision = self.s.gate.check_lookup(
            patient_pseudonym=pseudo, caller=org.org_id, lookup_id=lookup_id
        )
        holders = self.s.locator.lookup(pseudo, exclude=org.org_id) if decision.permit else []
        self.s.auditor.record_lookup(
            caller=org.org_id,
            patient_pseudonym=pseudo,
            lookup_id=lookup_id,
            permitted=decision.permit,
            reason=decision.reason,
            holders=len(holders),
            consent_ids=decision.consent_ids,
            break_glass=decision.break_glass,
        )
        if not decision.permit:
            code = "UNAVAILABLE" if decision.unavailable else "PERMISSION_DENIED"
            raise ExchangeError(code, f"lookup refused by the coordinator: {decision.reason}")
        return pb.LookupResponse(holders=holders)


class _RoutedDecisions:
    """This replica's permits at routing that the registry marked reusable, by envelope id,
    until delivery (bounded: the oldest go first — an envelope without one is decided again).
    Nothing durable: a restart, or delivery by another replica, decides again."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._items: OrderedDict[str, GateDecision] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, envelope_id: str, decision: GateDecision) -> None:
        with self._lock:
            self._items[envelope_id] = decision
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def has(self, envelope_id: str) -> bool:
        with self._lock:
            return envelope_id in self._items

    def take(self, envelope_id: str) -> GateDecision | None:
        with self._lock:
            return self._items.pop(envelope_id, None)


class ExchangeServicer(_Base, pb_grpc.ExchangeServicer):
    replica_id = uuid.uuid4().hex[:12]

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.routed = _RoutedDecisions()

    @_unary
    def Send(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        org = self.caller(context)
        if not request.HasField("header"):
            raise ExchangeError("INVALID_ARGUMENT", "the envelope has no header")
        header = read_header(request.header)
        limits = self.s.limits
        now = time.time()
        check_header(header, caller=org.org_id, now=now, max_ttl=limits.max_ttl_seconds)
        check_size(request.sealed, max_bytes=limits.max_envelope_bytes)
        check_sealed_matches(header, request.sealed)
        recipient = self.s.directory.get(header.recipient)
        if recipient is None:
            raise ExchangeError("NOT_FOUND", f"unknown recipient {header.recipient!r}")
        if recipient.revoked:
            raise ExchangeError(
                "FAILED_PRECONDITION", f"recipient {header.recipient} has been revoked"
            )
        # A retry (same id and content) finds its single queue entry and changes nothing.
        if self.s.queue.state(header.envelope_id) is not None and not self.s.queue.accept(
            header, request.sealed, now=now
        ):
            log.info("send duplicate envelope=%s sender=%s", header.envelope_id, org.org_id)
            return pb.SendResponse(envelope_id=header.envelope_id, duplicate=True)
        if self.s.queue.sent_since(org.org_id, now - 60) >= limits.rate_per_minute:
            raise ExchangeError(
                "RESOURCE_EXHAUSTED",
                f"rate limit: {org.org_id} may send {limits.rate_per_minute} envelopes per minute",
            )
        decision = self.s.gate.check(
            header, prior_exchange=lambda: self.s.queue.has_exchange(header)
        )
        if decision.unavailable:
            # Nothing was decided, nothing is queued: the sender keeps it and sends it again.
            log.warning("send deferred envelope=%s: %s", header.envelope_id, decision.reason)
            raise ExchangeError("UNAVAILABLE", f"{decision.reason}; try again")
        if not decision.permit:
            self.s.queue.log_refusal(header, decision.reason)
            self.s.auditor.record(
                header, "refused", decision.reason, decision.consent_ids,
                break_glass=decision.break_glass,
            )  # fmt: skip
            log.info(
                "send refused envelope=%s sender=%s recipient=%s: %s",
                header.envelope_id,
                header.sender,
                header.recipient,
                decision.reason,
            )
            raise ExchangeError(
                "PERMISSION_DENIED", f"refused by the coordinator: {decision.reason}"
            )
        duplicate = not self.s.queue.accept(
            header, request.sealed, now=now, also=self._audit("accepted", decision)
        )
        if not duplicate:
            if decision.epoch is not None:
                self.routed.keep(header.envelope_id, decision)
            self.s.notifier.notify(header.recipient)
        log.info(  # no size: even a padded bucket is more than the log needs
            "send accepted envelope=%s kind=%s sender=%s recipient=%s",
            header.envelope_id,
            header.kind,
            header.sender,
            header.recipient,
        )
        return pb.SendResponse(envelope_id=header.envelope_id, duplicate=duplicate)

    def _audit(self, decision: str, why: GateDecision) -> Also:
        """The routing audit entry of a queue state change, written in its transaction."""

        def write(conn: Any, header: Any) -> None:
            self.s.auditor.record_in(
                conn, header, decision, why.reason, why.consent_ids, break_glass=why.break_glass
            )

        return write

    def _deliverable(self, item: QueuedEnvelope, now: float, epoch_now: str | None) -> bool:
        """Checks at delivery time: still unexpired, consent still permits — the routing
        decision stands if no consent was written since it (``GateDecision.still_holds``;
        ``epoch_now`` asked of the registry just before this envelope), else the registry
        decides again."""
        header = item.header
        routed = self.routed.take(header.envelope_id)
        if header.expires_at.timestamp() <= now:
            reason = "expired before delivery"
            self.s.queue.kill(
                header.envelope_id, reason, also=self._audit("dead", GateDecision(False, reason))
            )
            return False
        if routed is not None and routed.still_holds(epoch_now):
            decision = GateDecision(
                True,
                f"{routed.reason} (consents unchanged since routing: epoch {routed.epoch})",
                routed.consent_ids,
            )
        else:
            decision = self.s.gate.check(
                header, prior_exchange=lambda: self.s.queue.has_exchange(header)
            )
        if decision.unavailable:
            # Not refused: the lease runs out and the envelope is offered again.
            log.warning("delivery deferred envelope=%s: %s", header.envelope_id, decision.reason)
            return False
        if not decision.permit:
            reason = f"not delivered: {decision.reason}"
            dead = GateDecision(
                False, reason, decision.consent_ids, break_glass=decision.break_glass
            )
            self.s.queue.kill(header.envelope_id, reason, also=self._audit("dead", dead))
            log.info("delivery stopped envelope=%s: %s", header.envelope_id, decision.reason)
            return False
        self.s.auditor.record(
            header, "delivered", decision.reason, decision.consent_ids,
            break_glass=decision.break_glass,
        )  # fmt: skip
        return True

    @_streaming
    def Inbox(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        org = self.caller(context)
        owner = f"{self.replica_id}:{uuid.uuid4().hex[:8]}"
        batch = min(request.max_batch or self.s.limits.default_batch, 256)
        leased: list[str] = []
        context.add_callback(lambda: self.s.notifier.notify(org.org_id))
        log.info("inbox open org=%s follow=%s", org.org_id, request.follow)
        last_touch = 0.0
        try:
            while context.is_active():
                now = time.time()
                if now - last_touch >= TOUCH_EVERY:
                    self.s.directory.touch(org.org_id, now)
                    last_touch = now
                seen = self.s.notifier.generation(org.org_id)
                items = self.s.queue.claim(org.org_id, limit=batch, lease_owner=owner, now=now)
                for item in items:
                    # Asked per envelope, just before it is handed over: the stream resumes
                    # only when the receiver takes the previous one, which it may delay at
                    # will, so a batch-wide answer could let a revocation written meanwhile
                    # pass. A small registry read, not a re-decision; only when a routing
                    # decision could stand.
                    reuse = self.routed.has(item.header.envelope_id)
                    epoch_now = self.s.gate.epoch_now() if reuse else None
                    if not self._deliverable(item, time.time(), epoch_now):
                        continue
                    leased.append(item.header.envelope_id)
                    yield pb.Envelope(
                        header=header_to_pb(item.header),
                        sealed=item.sealed,
                        delivery_attempt=item.attempts,
                    )
                if not items:
                    if not request.follow:
                        return
                    self.s.notifier.wait(org.org_id, seen, self._idle_wait(org.org_id, last_touch))
        finally:
            # Unacknowledged envelopes go straight back to the queue for the next stream, and
            # the recipient's other streams are woken to take them.
            self.s.queue.release(leased, owner)
            if leased:
                self.s.notifier.notify(org.org_id)
            log.info("inbox closed org=%s delivered=%d", org.org_id, len(leased))

    def _idle_wait(self, org_id: str, last_touch: float) -> float:
        """How long an idle stream sleeps (the notifier wakes it sooner) before it looks at the
        queue again: at most until its directory touch is due (the org stays online); on a
        shared queue at most ``poll_interval`` (envelopes queued or released by another replica
        wake nothing here); on this process's own queue everything that makes an envelope
        claimable wakes the notifier except a lease running out, so until the earliest lease
        of the recipient's envelopes runs out."""
        now = time.time()
        wait = last_touch + TOUCH_EVERY - now
        if self.s.queue.shared:
            wait = min(wait, self.s.limits.poll_interval)
        else:
            expiry = self.s.queue.next_lease_expiry(org_id)
            if expiry is not None:  # claimable once lease_until < now
                wait = min(wait, expiry - now + LEASE_SLACK)
        return max(LEASE_SLACK, wait)

    @_unary
    def Acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        org = self.caller(context)
        if request.outcome not in (pb.OUTCOME_IMPORTED, pb.OUTCOME_REJECTED):
            raise ExchangeError("INVALID_ARGUMENT", "outcome must be IMPORTED or REJECTED")
        imported = request.outcome == pb.OUTCOME_IMPORTED
        reason = request.detail or ("imported by the recipient" if imported else "rejected")
        outcome = GateDecision(imported, reason)
        # the acknowledgement and its audit entry: one durable commit
        state, _changed = self.s.queue.acknowledge(
            request.envelope_id,
            org.org_id,
            imported=imported,
            detail=request.detail,
            also=self._audit("imported" if imported else "rejected", outcome),
        )
        log.info("ack envelope=%s org=%s state=%s", request.envelope_id, org.org_id, state)
        return pb.AcknowledgeResponse(envelope_id=request.envelope_id, state=state)

    @_unary
    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        org = self.caller(context)
        st = self.s.queue.state(request.envelope_id)
        if st is None or org.org_id not in (st.sender, st.recipient):
            raise ExchangeError("NOT_FOUND", f"no envelope {request.envelope_id} of yours")
        return pb.StatusResponse(
            envelope_id=st.envelope_id,
            state=st.state,
            reason=st.reason,
            attempts=st.attempts,
            accepted_at=int(st.accepted_at),
            updated_at=int(st.updated_at),
            sender=st.sender,
            recipient=st.recipient,
            kind=st.kind,
        )


def add_servicers(server: grpc.Server, services: Services) -> None:
    pb_grpc.add_DirectoryServicer_to_server(DirectoryServicer(services), server)
    pb_grpc.add_RecordLocatorServicer_to_server(LocatorServicer(services), server)
    pb_grpc.add_ExchangeServicer_to_server(ExchangeServicer(services), server)
