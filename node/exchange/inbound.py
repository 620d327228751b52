"""What arrives from other organisations: open, check, import — exactly once.

For each delivered envelope: verify the sender's signature through its CA-issued certificate,
check its times and decrypt (nothing is recorded for an envelope that fails this); then, if its
id is already in ``exchange_inbound``, it was handled before (acknowledge again, change
nothing). Otherwise refuse a document whose consent decision (signed by the registry, carried
inside, bound to the envelope id) does not cover it — the classes are those the document
carries, the purpose the decision's: the clear header names neither (issue 23) — with a negative
acknowledgement, audited at the coordinator; import the document into the local store and
record the envelope id **in the same database transaction**.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select

from node.exchange.context import ExchangeContext
from node.exchange.documents import (
    PSEUDONYM_SYSTEM,
    TASK_ID_SYSTEM,
    carried_classes,
    decision_of,
    linked_patient,
    patient_of,
    prepare_import,
    resources_of,
    workflow_only_problem,
)
from node.exchange.tables import inbound, pseudonyms
from node.exchange.workflow import BREAK_GLASS_PREFIX, pull_note, query_parameter, task_uid
from node.identity import NATIONAL_ID_SYSTEMS
from node.store import UnitOfWork, parse_bundle
from servicekit.outcome import FhirError
from trust.envelopes import (
    DATA_KINDS,
    KINDS,
    MAX_CLOCK_SKEW,
    EnvelopeError,
    SealedEnvelope,
    open_from,
)

__all__ = ["Handled", "handle_envelope", "already_processed", "exchange_writer"]

log = logging.getLogger("ipjms.node.exchange")
ROUTING_MISMATCH = "the routing pseudonym does not match the patient inside"
# The header's routing-pseudonym check of an incoming document runs here, beside its import's
# link/prepare/validate steps (handle_envelope).
_ROUTING_CHECKS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="routing-check")


@dataclass(frozen=True)
class Handled:
    imported: bool  # False → negative acknowledgement
    detail: str
    query: dict[str, Any] | None = None  # a record query to answer (after the ack)
    patient: str | None = None  # the regional pseudonym the query is about


def already_processed(ctx: ExchangeContext, envelope_id: str) -> str | None:
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(inbound.c.outcome).where(inbound.c.envelope_id == envelope_id)
        ).first()
    return str(row[0]) if row else None


def _record(conn: Any, sealed: SealedEnvelope, outcome: str, detail: str, **extra: Any) -> None:
    h = sealed.header
    conn.execute(
        insert(inbound).values(
            envelope_id=h.envelope_id,
            sender=h.sender,
            kind=h.kind,
            outcome=outcome,
            detail=detail[:500],
            received_at=time.time(),
            **extra,
        )
    )


def exchange_writer(sender: str) -> str:
    """The writer of the commit events of what ``sender`` sent us (an organisation id)."""
    return f"exchange:{sender}"


@dataclass(frozen=True)
class _Linked:
    """Who a document is about on this side: a local patient already known (``patient_id``),
    or a Patient the import creates (``new_patient``); ``map_pseudonym``: the import records
    which local patient the regional pseudonym stands for (it has no mapping yet)."""

    patient_id: str | None
    new_patient: dict[str, Any] | None
    map_pseudonym: bool


def _local_patient(ctx: ExchangeContext, pseudo: str, shared: dict[str, Any] | None) -> _Linked:
    """The local Patient standing for ``pseudo``: known mapping, else a local record with the
    same national identifier, else a new Patient from what was shared (or a pseudonym stub) —
    made by the import itself, so that the Patient, its pseudonym mapping and the document
    are one commit (nothing of a refused import stays behind)."""
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == pseudo)
        ).first()
    if row:
        return _Linked(str(row[0]), None, False)
    # A Patient carrying the pseudonym but no mapping (one linked before the mapping was part of
    # the import) is that patient: the import's conditional update would refuse a second one.
    linked = ctx.store.search("Patient", [("identifier", f"{PSEUDONYM_SYSTEM}|{pseudo}")])
    if linked.resources:
        return _Linked(str(linked.resources[0]["id"]), None, True)
    for ident in (shared or {}).get("identifier", []):
        if ident.get("system") in NATIONAL_ID_SYSTEMS and ident.get("value"):
            hits = ctx.store.search(
                "Patient", [("identifier", f"{ident['system']}|{ident['value']}")]
            )
            if hits.resources:
                return _Linked(str(hits.resources[0]["id"]), None, True)
    return _Linked(None, linked_patient(shared, pseudo), True)


def _map_pseudonym(conn: Any, pseudo: str, patient_id: str) -> None:
    """Record that ``pseudo`` stands for ``patient_id`` (a mapping already there is kept)."""
    if not conn.execute(
        select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == pseudo)
    ).first():
        conn.execute(insert(pseudonyms).values(pseudonym=pseudo, patient_id=patient_id))


def _find_task(ctx: ExchangeContext, uid: str) -> dict[str, Any] | None:
    hits = ctx.store.search("Task", [("identifier", f"{TASK_ID_SYSTEM}|{uid}")])
    originals = [t for t in hits.resources if not t.get("meta", {}).get("source")]
    pool = originals or hits.resources
    return pool[0] if pool else None


def _import_document(
    ctx: ExchangeContext,
    sealed: SealedEnvelope,
    document: dict[str, Any],
    regional: str,
    purpose: str | None,
    routed: Future[bool] | None = None,
) -> Handled:
    """Link, prepare, validate, then write and commit in one unit of work. ``routed``: the
    header's routing-pseudonym check still running (``handle_envelope``), awaited before the
    write — a mismatch rejects the envelope with nothing written."""
    h = sealed.header
    sender = ctx.organisation(h.sender)
    with ctx.timed("in", "link"):
        linked, existing, uid = _link(ctx, document, regional)
    with ctx.timed("in", "prepare"):
        tx = prepare_import(
            document,
            sender=h.sender,
            sender_name=sender.name,
            envelope_id=h.envelope_id,
            local_patient_id=linked.patient_id,
            new_patient=linked.new_patient,
            existing=existing,
        )
        entries = parse_bundle(tx, "transaction").entries
        imported = len(entries) - (linked.new_patient is not None)  # the document's resources
    with ctx.timed("in", "validate"):
        # before the write lock: API writes are not held up by an import
        ctx.store.prevalidate(entries)
    if routed is not None:
        with ctx.timed("in", "routing"):  # what the check takes beyond link…validate
            misrouted = _misrouted(routed)
        if misrouted:
            return _reject(ctx, sealed, ROUTING_MISMATCH)
    written = 0.0

    def work(uow: UnitOfWork) -> None:
        nonlocal written
        # The import and the record that the envelope was handled: one unit of work, so a
        # redelivery finds either both or neither (and the commit events cover the import).
        with ctx.timed("in", "write"):
            results = uow.apply(entries)
            patient_id = linked.patient_id
            if patient_id is None:  # created (or matched by its pseudonym) by entry 0
                assert results[0].location is not None
                patient_id = results[0].location.split("/")[1]
            if linked.map_pseudonym:
                _map_pseudonym(uow.conn, regional, patient_id)
            _record(
                uow.conn,
                sealed,
                "imported",
                (f"{BREAK_GLASS_PREFIX} ({purpose}): " if purpose == "ETREAT" else "")
                + f"{imported} resources",
                task_uid=uid,
                patient_id=patient_id,
            )
        written = time.perf_counter()

    ctx.store.write(work, writer=exchange_writer(h.sender))
    ctx.observe("in", "commit", time.perf_counter() - written)  # the durable (fsync'd) commit
    return Handled(True, f"imported {imported} resources")


def _link(
    ctx: ExchangeContext, document: dict[str, Any], regional: str
) -> tuple[_Linked, dict[str, dict[str, Any]], str | None]:
    """The local patient the document is about, the exchange Tasks it updates, its Task uid."""
    resources = resources_of(document)
    # A Task this node already holds (it sent the request, or received it earlier) is updated
    # in place: one Task per exchange on each side, whose status follows the other side's.
    existing: dict[str, dict[str, Any]] = {}
    uid = None
    for res in resources:
        if res["resourceType"] == "Task" and (uid := task_uid(res)):
            local = _find_task(ctx, uid)
            if local is not None:
                existing[f"Task/{res.get('id')}"] = local
    # The local patient: the one of a Task we hold, else by pseudonym / identifier / new.
    held = [
        t for t in existing.values() if t.get("for", {}).get("reference", "").startswith("Patient/")
    ]
    if held:
        return _Linked(held[0]["for"]["reference"].split("/", 1)[1], None, False), existing, uid
    shared_patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
    return _local_patient(ctx, regional, shared_patient), existing, uid


def handle_envelope(ctx: ExchangeContext, raw: bytes) -> Handled:
    """Process one delivered envelope; the caller acknowledges with the result.

    The duplicate-id check runs only *after* the envelope is authenticated (signature verified
    through the sender's CA-issued certificate, decrypted): an envelope that cannot be opened —
    forged, tampered, or met while the directory was unreachable — is refused but not recorded
    under its id, so it can never burn the id of the real envelope."""
    try:
        sealed = SealedEnvelope.from_bytes(raw)
    except (EnvelopeError, ValueError) as exc:
        return Handled(False, f"malformed envelope: {exc}")
    h = sealed.header
    if h.recipient != ctx.org_id:
        return Handled(False, "envelope is not addressed to this organisation")
    try:
        with ctx.timed("in", "open"):  # verify the signature, check times, decrypt
            try:
                payload = _open(ctx, sealed, refresh=False)
            except EnvelopeError:
                payload = _open(ctx, sealed, refresh=True)  # the sender may have rotated keys
    except EnvelopeError as exc:
        return _unauthenticated(sealed, "cannot open the envelope", exc)
    except Exception as exc:  # certificate refused, directory unreachable…
        return _unauthenticated(sealed, "cannot verify the sender", exc)
    started = time.perf_counter()  # "parse": handled before? then the payload's JSON
    previous = already_processed(ctx, h.envelope_id)
    if previous is not None:  # a redelivery: no step of an import is timed
        return Handled(previous != "rejected", f"already processed ({previous})")
    try:
        body = json.loads(payload)
    except ValueError as exc:
        return _reject(ctx, sealed, "cannot parse the envelope", local=str(exc))
    ctx.observe("in", "parse", time.perf_counter() - started)
    inside = _inside_pseudonym(body)
    routed: Future[bool] | None = None
    if h.kind != "record-query" and inside:
        # A document: the header's routing pseudonym is checked (one evaluation at the
        # authority) while the document is linked, prepared and validated; nothing is written
        # before the check has passed (``_import_document``).
        routed = _ROUTING_CHECKS.submit(_routes_to, ctx, sealed, inside)
        regional: str | None = inside
    else:
        with ctx.timed("in", "routing"):  # the header's pseudonym checked (the authority's)
            regional = regional_pseudonym(ctx, sealed, body)
    if regional is None:
        return _reject(ctx, sealed, ROUTING_MISMATCH)
    if h.kind == "record-query":
        # A break-glass pull is shown as such on this side too: the inbox row says who asked
        # and why, with the local patient (the referrals page lists these rows).
        emergency = (
            isinstance(body, dict)
            and isinstance(body.get("parameter"), list)
            and query_parameter(body, "purpose") == "ETREAT"
        )
        with ctx.engine.begin() as conn:
            local = conn.execute(
                select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == regional)
            ).first()
            _record(
                conn, sealed, "answered", pull_note(body) if emergency else "record query",
                patient_id=str(local[0]) if emergency and local else None,
            )  # fmt: skip
        return Handled(True, "record query", query=body, patient=regional)
    if h.kind not in KINDS:  # every other kind carries a document Bundle
        return _refusal(ctx, sealed, routed, f"unsupported envelope kind {h.kind!r}")
    try:
        if not isinstance(body, dict):
            raise ValueError("payload is not a JSON object")
        carried = carried_classes(body)
    except ValueError as exc:
        return _refusal(ctx, sealed, routed, "payload is not a document Bundle", str(exc))
    with ctx.timed("in", "proof"):  # the registry's signed decision inside, checked
        refused, purpose = _consent_proof_problem(ctx, sealed, body, regional, carried)
    if refused is not None:
        result = _refusal(ctx, sealed, routed, refused)
        log.warning("envelope %s from %s rejected: %s", h.envelope_id, h.sender, result.detail)
        return result
    try:
        return _import_document(ctx, sealed, body, regional, purpose, routed)
    except FhirError as exc:
        # The store's message may quote content: keep it here, tell the coordinator only why.
        log.warning("envelope %s: import refused by the store (%s)", h.envelope_id, exc.status)
        return _refusal(ctx, sealed, routed, "import refused by the store", exc.diagnostics)
    except Exception:
        # an import that fails otherwise is retried (not acknowledged) — unless the routing
        # check, which ran first before it overlapped the import, refuses the envelope anyway
        if _misrouted(routed):
            return _reject(ctx, sealed, ROUTING_MISMATCH)
        raise


def _refusal(
    ctx: ExchangeContext,
    sealed: SealedEnvelope,
    routed: Future[bool] | None,
    reason: str,
    local: str = "",
) -> Handled:
    """Refuse the envelope; a routing-pseudonym check still running is awaited and, when it
    fails, is the reason given — as when it ran before every other check."""
    if _misrouted(routed):
        return _reject(ctx, sealed, ROUTING_MISMATCH)
    return _reject(ctx, sealed, reason, local=local)


def _misrouted(routed: Future[bool] | None) -> bool:
    """Whether the overlapped routing check (awaited here; its errors propagate: the envelope
    is then retried) found the header's pseudonym wrong. None: no check was overlapped."""
    return routed is not None and not routed.result()


def _inside_pseudonym(body: Any) -> str | None:
    """The patient's regional pseudonym carried inside the payload (a document's
    ``meta.extension``, a record query's ``patient`` parameter), or None."""
    inside: Any = None
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        inside = patient_of(body)
    elif isinstance(body, dict) and body.get("resourceType") == "Parameters":
        found = [
            p.get("valueString")
            for p in body.get("parameter", [])
            if isinstance(p, dict) and p.get("name") == "patient"
        ]
        inside = found[0] if len(found) == 1 else None
    return inside if isinstance(inside, str) and inside else None


def _routes_to(ctx: ExchangeContext, sealed: SealedEnvelope, inside: str) -> bool:
    """Whether the header's routing pseudonym is ``inside``'s for this pair of organisations."""
    h = sealed.header
    try:
        expected = ctx.pseudonymiser.routing(inside, h.sender, h.recipient)
    except ValueError:  # not a pseudonym of this region's scheme
        return False
    return expected == h.patient_pseudonym


def regional_pseudonym(ctx: ExchangeContext, sealed: SealedEnvelope, body: Any) -> str | None:
    """The patient's regional pseudonym, carried inside the payload, checked against the
    header's routing pseudonym for this pair of organisations (None: they disagree). An
    envelope without one inside (a sender from before routing pseudonyms) is read by its
    header."""
    inside = _inside_pseudonym(body)
    if inside is None:
        return sealed.header.patient_pseudonym or ""
    return inside if _routes_to(ctx, sealed, inside) else None


def _consent_proof_problem(
    ctx: ExchangeContext,
    sealed: SealedEnvelope,
    document: dict[str, Any],
    regional: str,
    carried: list[str],
) -> tuple[str | None, str | None]:
    """Why the consent decision carried inside the envelope does not cover it (None: it does),
    and the purpose that decision was made for (None: no decision was needed).

    A data-carrying envelope — a data kind, or any document carrying data classes — must carry
    the registry's signed decision (verified against the registry's CA-issued certificate when
    ``consent.registry_org`` is set): a permit, live when the envelope was made, bound to this
    envelope's id, for its patient, sender and recipient, and permitting every class the
    document carries. The purpose is the decision's: the clear header has none.

    Any other envelope (a task update carrying no data class, its own or contained) needs no
    decision — and so may carry nothing but one Task's workflow fields in the document frame
    (``documents.workflow_only_problem``): no notes, contained resources or narrative."""
    h = sealed.header
    if h.kind not in DATA_KINDS and not carried:
        extra = workflow_only_problem(document)
        if extra:  # field names only, kept here: the coordinator is not told what was inside
            log.warning("envelope %s (%s) without a consent decision carries %s",
                        h.envelope_id, h.kind, ", ".join(extra))  # fmt: skip
            return f"a {h.kind} without a consent decision may carry only workflow fields", None
        return None, None
    token = decision_of(document)
    if token is None:
        return "the envelope carries no consent decision", None
    try:
        d = ctx.consent.verify_decision(
            token,
            valid_at=int(h.created_at.timestamp()),
            leeway=int(MAX_CLOCK_SKEW.total_seconds()),
        )
    except Exception as exc:  # forged, expired, unknown key, registry cert refused, no CRL…
        return f"consent decision refused: {exc}", None
    mismatched = [
        name
        for name, ok in (
            ("permit", d.permit),
            ("envelope", d.envelope_id == h.envelope_id),
            ("patient", d.patient == regional),
            ("requester", d.requester == h.sender),
            ("recipient", d.recipient == h.recipient),
        )
        if not ok
    ]
    if mismatched:
        return f"consent decision does not match the envelope: {', '.join(mismatched)}", None
    unpermitted = sorted(set(carried) - set(d.classes))
    if unpermitted:  # the class names stay here: the coordinator is not told which data
        log.warning("envelope %s carries classes %s its decision does not permit",
                    h.envelope_id, unpermitted)  # fmt: skip
        return "content outside the classes its consent decision permits", None
    return None, d.purpose


def _open(ctx: ExchangeContext, sealed: SealedEnvelope, *, refresh: bool) -> bytes:
    sender = ctx.organisation(sealed.header.sender, refresh=refresh)
    return open_from(
        sealed,
        recipient=ctx.creds,
        sender_signing_cert_pem=sender.signing_certificate,
        revoked=ctx.revoked(),
    )


def _unauthenticated(sealed: SealedEnvelope, detail: str, exc: Exception) -> Handled:
    """Refuse an envelope that was not authenticated, recording nothing under its id (the id
    is only the claim of whoever made the bytes)."""
    log.warning(
        "envelope %s (claimed sender %s) refused: %s (%s: %s)",
        sealed.header.envelope_id,
        sealed.header.sender,
        detail,
        type(exc).__name__,
        exc,
    )
    return Handled(False, detail)


def _reject(
    ctx: ExchangeContext, sealed: SealedEnvelope, detail: str, *, local: str = ""
) -> Handled:
    """Record the refusal (with any local-only detail) and answer with ``detail``, which goes
    to the coordinator and so must name no content."""
    with ctx.engine.begin() as conn:
        _record(conn, sealed, "rejected", f"{detail}: {local}" if local else detail)
    return Handled(False, detail)
