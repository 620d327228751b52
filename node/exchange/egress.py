"""What leaves this hospital, as one visible pipeline:

    collect → filter by consent → pack → seal → send

Every disclosure to another organisation (referral, consultation, advice, record answer, status
update) goes through :func:`disclose`; nothing else in the node seals clinical data. The consent
registry is asked here (the sending node's own enforcement) for a decision bound to the envelope
id; the signed decision travels inside the envelope with the purpose and the permitted classes,
which the clear header does not carry (issue 23). The registry is offered the patient's
pseudonym under every key version the authority still holds (``older_pseudonyms``) and decides
under the one the patient is known by; the envelope then names that one inside. The
coordinator has the registry decide it again by envelope id before routing, and the receiver
checks the decision against what it unpacks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import insert, select, update

from consent.client import ConsentRegistryError, SignedDecision
from node.exchange.context import ExchangeContext
from node.exchange.documents import (
    PSEUDONYM_SYSTEM,
    STRUCTURAL_TYPES,
    attach_decision,
    attach_patient,
    carried_classes,
    filter_by_classes,
    pack_document,
)
from node.exchange.tables import outbound, pseudonyms
from node.identity import patient_candidates, patient_pseudonym
from servicekit.outcome import (
    BadRequest,
    Conflict,
    FhirError,
    Forbidden,
    NotFound,
    ServiceUnavailable,
)
from trust.certificates import CertificateError
from trust.envelopes import EnvelopeHeader, SealedEnvelope, seal_to
from trust.pseudonym import IdentifierError

__all__ = [
    "BreakGlass",
    "BreakGlassPull",
    "emergency_parameters",
    "registry_decision",
    "ConsentRefused",
    "Disclosure",
    "collect",
    "disclose",
    "send",
    "pseudonym_of",
    "older_pseudonyms",
    "decided_pseudonym",
    "remember_pseudonym",
]

log = logging.getLogger("ipjms.node.exchange")
# The consent question (the registry) and the routing pseudonym (the authority) are asked here
# while the sender reads its records (see disclose): a pool each, so that one waiting out the
# authority's rate limit never holds up the other's questions.
_CONSENT_ASKS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="consent-ask")
_ROUTING_ASKS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="routing-ask")
ENVELOPE_TTL = dt.timedelta(days=7)
# What a referral/consultation asks consent for unless the doctor narrows it.
DEFAULT_CLASSES = (
    "Patient",
    "Condition",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Observation",
    "DiagnosticReport",
    "Procedure",
    "Immunization",
    "Encounter",
    "CarePlan",
    "ServiceRequest",
)


class ConsentRefused(Forbidden):
    """The patient's consent does not permit this disclosure."""


@dataclass(frozen=True)
class BreakGlass:
    """An emergency disclosure (purpose ETREAT): the clinician's stated reason, role and user
    name go to the registry inside this organisation's signed assertion; the registry decides
    whether they suffice (a reason, a doctor or nurse) and audits the grant."""

    reason: str
    role: str
    user: str


@dataclass(frozen=True)
class BreakGlassPull:
    """A disclosure carried by a clinician's break-glass pull (purpose ETREAT): a holder's
    record answer (or the puller's record query) asks the registry under the pull grant
    (``pull``: the envelope id it is bound to); no clinician of this organisation is named."""

    pull: str


@dataclass(frozen=True)
class Disclosure:
    sealed: SealedEnvelope
    classes: tuple[str, ...]
    resource_count: int


def pseudonym_of(ctx: ExchangeContext, patient_id: str) -> tuple[dict[str, Any], str]:
    patient = ctx.store.read("Patient", patient_id)
    try:
        pseudo = patient_pseudonym(patient, ctx.pseudonymiser, strict=True)
    except IdentifierError as exc:
        raise Conflict(f"Patient/{patient_id}: {exc}") from None
    if pseudo is None:
        pseudo = _linked_pseudonym(patient)
    if pseudo is None:
        raise Conflict(f"Patient/{patient_id} has no national identifier to link it by")
    remember_pseudonym(ctx, pseudo, patient_id)
    return patient, pseudo


def older_pseudonyms(ctx: ExchangeContext, patient: dict[str, Any], pseudo: str) -> list[str]:
    """The patient's pseudonyms under the older key versions the authority still holds — this
    node's own OPRF evaluations of the national identifier it holds, each paid once and kept in
    the node's pseudonym store (``OprfPseudonymiser.candidates``) — offered to the consent
    registry with ``pseudo`` so that consents recorded before a key rotation are found (issue
    23). [] for a patient without a national identifier (linked by pseudonym only) or when
    ``pseudo`` is not the identifier's current pseudonym."""
    every = patient_candidates(patient, ctx.pseudonymiser)
    if not every or every[0] != pseudo:
        return []
    return every[1:]


def decided_pseudonym(
    ctx: ExchangeContext, decision: SignedDecision, pseudo: str, patient_id: str
) -> str:
    """The pseudonym the registry decided under (``pseudo`` or one of the older ones offered;
    ``ConsentClient.decide`` refuses any other): what the envelope then names inside, so its
    receiver matches the decision it carries, and what this node remembers for the patient."""
    chosen = decision.patient or pseudo
    if chosen != pseudo:
        remember_pseudonym(ctx, chosen, patient_id)
    return chosen


def _linked_pseudonym(patient: dict[str, Any]) -> str | None:
    """A patient created on import may carry only the regional pseudonym."""
    for ident in patient.get("identifier", []):
        if ident.get("system") == PSEUDONYM_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def remember_pseudonym(ctx: ExchangeContext, pseudo: str, patient_id: str) -> None:
    with ctx.engine.begin() as conn:
        known = conn.execute(
            select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == pseudo)
        ).first()
        if known is None:
            conn.execute(insert(pseudonyms).values(pseudonym=pseudo, patient_id=patient_id))


def collect(ctx: ExchangeContext, patient_id: str, classes: set[str]) -> list[dict[str, Any]]:
    """Step 1: the patient's resources of the wanted types from this node's own store."""
    types = sorted(classes - {"Patient"})
    if not types:
        return []
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = ctx.store.everything(patient_id, types=types, count=500, offset=offset)
        out.extend(r for r in page.resources if r.get("resourceType") != "Patient")
        offset += len(page.resources)
        if not page.resources or offset >= page.total:
            return out


def disclose(
    ctx: ExchangeContext,
    *,
    kind: str,
    recipient: str,
    patient_id: str,
    purpose: str,
    wanted: set[str],
    workflow: list[dict[str, Any]] | None = None,
    title: str,
    break_glass: BreakGlass | BreakGlassPull | None = None,
) -> Disclosure:
    """collect → filter by consent → pack → seal. Raises ConsentRefused when nothing may go.
    With ``break_glass`` the purpose must be ETREAT and the registry is asked with the reason
    and the clinician (or, for a break-glass pull's answer, under the pull grant); its refusal
    (no reason 400, not a clinician 403, no such pull grant 403) is passed on as such."""
    if (break_glass is not None) != (purpose == "ETREAT"):
        raise BadRequest("break-glass (ETREAT) needs a stated reason and a clinician")
    with ctx.timed("out", "pseudonym"):  # the patient's regional pseudonym (the authority's)
        patient, pseudo = pseudonym_of(ctx, patient_id)
    workflow = workflow or []
    # The envelope's id is chosen first: the registry binds its decision to it, and the
    # decision travels inside that envelope for the receiver to verify before importing.
    envelope_id = str(uuid.uuid4())
    token: str | None = None
    ask = sorted(wanted | {r["resourceType"] for r in workflow} - STRUCTURAL_TYPES)
    if ask:
        # The registry decides while this node reads its own records; nothing is packed or
        # sealed before the decision is in, and only what it permits is kept.
        emergency = emergency_parameters(break_glass)

        def decide() -> SignedDecision:
            # the patient's pseudonyms under older key versions still held (the store, else
            # one evaluation each, once): the registry decides under the one it knows
            older = older_pseudonyms(ctx, patient, pseudo)
            offered = {"candidates": older} if older else {}
            return ctx.consent.decide(  # type: ignore[no-any-return]
                pseudo, recipient, purpose, ask, envelope_id=envelope_id, **emergency, **offered
            )  # the registry records this organisation (the authenticated caller) as requester

        asked = _CONSENT_ASKS.submit(decide)
        # the header's routing pseudonym of this pair (one evaluation at the authority, then
        # kept) is asked meanwhile too, for the current pseudonym: what the registry decides
        # under unless the patient's consents predate a key rotation (then asked again below)
        routed_early = _ROUTING_ASKS.submit(
            ctx.pseudonymiser.routing, pseudo, ctx.org_id, recipient
        )
        try:
            with ctx.timed("out", "collect"):
                collected = collect(ctx, patient_id, wanted)
            with ctx.timed("out", "consent_wait"):  # what the decision takes beyond collect
                decision = _decision(asked)
        except Exception:
            asked.cancel()  # best effort: neither is asked if it has not started yet
            routed_early.cancel()
            raise
        if not decision.permit:
            routed_early.cancel()
            raise ConsentRefused(
                f"consent does not permit {purpose} to {recipient}: {decision.reason}"
            )
        permitted = set(decision.classes)
        token = decision.token
        decided = decided_pseudonym(ctx, decision, pseudo, patient_id)
        with ctx.timed("out", "routing"):  # what the routing pseudonym takes beyond those
            if decided == pseudo:
                routed = routed_early.result()
            else:
                routed_early.cancel()
                routed = ctx.pseudonymiser.routing(decided, ctx.org_id, recipient)
        pseudo = decided
    else:
        collected, permitted = [], set()
        with ctx.timed("out", "routing"):  # the header's pseudonym of this pair (authority's)
            routed = ctx.pseudonymiser.routing(pseudo, ctx.org_id, recipient)
    with ctx.timed("out", "pack_seal"):
        sealed, declared, count = _pack_and_seal(
            ctx,
            kind=kind,
            recipient=recipient,
            pseudo=pseudo,
            routed=routed,
            envelope_id=envelope_id,
            decision_token=token,
            resources=filter_by_classes(collected, permitted)
            + filter_by_classes(workflow, permitted | STRUCTURAL_TYPES),
            patient=patient if "Patient" in permitted else None,
            title=title,
        )
    return Disclosure(sealed, declared, count)


def emergency_parameters(break_glass: BreakGlass | BreakGlassPull | None) -> dict[str, str]:
    """What the registry is told of an emergency (``ConsentClient.decide`` keywords)."""
    if isinstance(break_glass, BreakGlass):
        return {
            "reason": break_glass.reason,
            "acting_role": break_glass.role,
            "acting_user": break_glass.user,
        }
    if isinstance(break_glass, BreakGlassPull):
        return {"pull": break_glass.pull}
    return {}


def registry_decision(asked: Callable[[], SignedDecision]) -> SignedDecision:
    """A registry decision asked now (see :func:`_decision`)."""
    future: Future[SignedDecision] = Future()
    try:
        future.set_result(asked())
    except Exception as exc:  # noqa: BLE001 - mapped by _decision
        future.set_exception(exc)
    return _decision(future)


def _decision(asked: Future[SignedDecision]) -> SignedDecision:
    """The registry's answer; a request it refused (4xx) is that refusal, never a 500."""
    try:
        return asked.result()
    except ConsentRegistryError as exc:
        if exc.status == 400:
            raise BadRequest(f"consent registry: {exc.message}") from None
        if exc.status == 403:
            raise ConsentRefused(f"consent registry: {exc.message}") from None
        raise ServiceUnavailable(f"consent registry answered {exc.status}") from None


def _pack_and_seal(
    ctx: ExchangeContext,
    *,
    kind: str,
    recipient: str,
    pseudo: str,
    routed: str,
    envelope_id: str,
    decision_token: str | None,
    resources: list[dict[str, Any]],
    patient: dict[str, Any] | None,
    title: str,
) -> tuple[SealedEnvelope, tuple[str, ...], int]:
    """Steps 3–4: the document Bundle of the permitted resources (with the signed consent
    decision that permitted them and the patient's regional pseudonym), sealed to
    ``recipient``. The clear header names the patient only by ``routed``, the routing pseudonym
    of this pair of organisations, and carries no purpose, class or consent reference (the decision
    inside has them)."""
    document = pack_document(resources, patient=patient, sender=ctx.org_id, title=title)
    attach_patient(document, pseudo)
    if decision_token is not None:
        attach_decision(document, decision_token)
    declared = tuple(carried_classes(document))
    header = EnvelopeHeader.new(
        kind=kind,
        sender=ctx.org_id,
        recipient=recipient,
        patient_pseudonym=routed,
        ttl=ENVELOPE_TTL,
        envelope_id=envelope_id,
    )
    sealed = seal_for(ctx, header, json.dumps(document, separators=(",", ":")).encode())
    return sealed, declared, len(document["entry"])


def seal_for(ctx: ExchangeContext, header: EnvelopeHeader, payload: bytes) -> SealedEnvelope:
    """Seal ``payload`` to ``header.recipient``'s CA-issued encryption certificate, checked
    against the CRL. A revoked recipient is a 409; an unknown revocation status (no, stale or
    rolled-back CRL) a 503 — nothing is sealed to a certificate that cannot be checked."""
    entry = ctx.organisation(header.recipient)
    try:
        return seal_to(
            header,
            payload,
            sender=ctx.creds,
            recipient_encryption_cert_pem=entry.encryption_certificate,
            revoked=ctx.revoked(),
        )
    except CertificateError as exc:
        status = 503 if "revocation" in str(exc) else 409
        raise FhirError(f"cannot seal to {header.recipient}: {exc}", status=status) from None


def send(
    ctx: ExchangeContext,
    disclosure: Disclosure | SealedEnvelope,
    *,
    task_uid: str | None = None,
    patient_id: str | None = None,
) -> str:
    """Record the envelope in the outbox, then hand it to the coordinator. A refusal becomes a
    clear error; an unreachable coordinator leaves it pending (resent by the outbox loop)."""
    sealed = disclosure.sealed if isinstance(disclosure, Disclosure) else disclosure
    classes = disclosure.classes if isinstance(disclosure, Disclosure) else ()
    h = sealed.header
    with ctx.timed("out", "outbox"), ctx.engine.begin() as conn:
        conn.execute(
            insert(outbound).values(
                envelope_id=h.envelope_id,
                recipient=h.recipient,
                kind=h.kind,
                classes=json.dumps(list(classes)),
                task_uid=task_uid,
                patient_id=patient_id,
                state="pending",
                detail="",
                sealed=sealed.to_bytes(),
                created_at=time.time(),
            )
        )
    return resend(ctx, sealed)


def resend(ctx: ExchangeContext, sealed: SealedEnvelope) -> str:
    envelope_id = sealed.header.envelope_id
    try:
        with ctx.timed("out", "coordinator"):  # its consent check, durable queue and audit
            ctx.client.send(sealed)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            log.warning("coordinator unreachable; envelope %s stays pending", envelope_id)
            ctx.pending.set()  # the outbox loop resends it
            return "pending"
        _mark(ctx, envelope_id, "refused", f"{code.name}: {exc.details()}")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            raise ConsentRefused(f"coordinator refused: {exc.details()}") from None
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"coordinator: {exc.details()}") from None
        raise FhirError(f"coordinator refused ({code.name}): {exc.details()}", status=502) from None
    with ctx.timed("out", "outbox_sent"):  # the outbox row marked sent, its bytes dropped
        _mark(ctx, envelope_id, "sent", "")
    log.info(
        "envelope %s sent (%s to %s)", envelope_id, sealed.header.kind, sealed.header.recipient
    )
    return "sent"


def _mark(ctx: ExchangeContext, envelope_id: str, state: str, detail: str) -> None:
    values: dict[str, Any] = {"state": state, "detail": detail[:500]}
    if state != "pending":
        values["sealed"] = None
        values["sent_at"] = time.time()
    with ctx.engine.begin() as conn:
        conn.execute(update(outbound).where(outbound.c.envelope_id == envelope_id).values(**values))
