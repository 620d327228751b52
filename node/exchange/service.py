"""The exchange operations a doctor (through the REST routes) or the inbox runner performs:
request (referral/consultation), status change, answer (advice), record pull, answering a
record query, and publishing this node's pseudonyms to the record locator.

No half-done local state: an operation that needs the consent registry asks it *before* it
writes anything, so a registry that is down or slow (503, :class:`RegistryUnavailable`) leaves
no ServiceRequest, Task or Communication behind that looks as if it had been sent. Once the
decision is in, the workflow resources are written in one transaction and the envelope goes to
the outbox; a coordinator that cannot be reached leaves it ``pending`` (the outbox loop sends it
when the coordinator is back), visible as such in the answer and in ``/exchange/outbox``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any

import grpc
from sqlalchemy import select

from node.exchange.context import ExchangeContext
from node.exchange.documents import workflow_task
from node.exchange.egress import (
    DEFAULT_CLASSES,
    BreakGlass,
    BreakGlassPull,
    ConsentRefused,
    decided_pseudonym,
    disclose,
    emergency_parameters,
    older_pseudonyms,
    pseudonym_of,
    registry_decision,
    seal_for,
    send,
)
from node.exchange.tables import pseudonyms
from node.exchange.workflow import (
    check_transition,
    new_request,
    query_parameter,
    task_parties,
    task_uid,
)
from node.identity import patient_pseudonyms
from node.store import DEFAULT_WRITER
from servicekit.outcome import BadRequest, Conflict
from trust.envelopes import REQUEST_KINDS, EnvelopeHeader
from trust.pseudonym import newest_key_version, pseudonym_key_version

__all__ = [
    "request_exchange",
    "change_status",
    "answer",
    "pull_history",
    "answer_query",
    "publish_pseudonyms",
]

log = logging.getLogger("ipjms.node.exchange")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def request_exchange(
    ctx: ExchangeContext,
    *,
    kind: str,
    patient_id: str,
    recipient: str,
    reason: str,
    question: str = "",
    classes: list[str] | None = None,
    writer: str = DEFAULT_WRITER,
    break_glass: BreakGlass | None = None,
) -> dict[str, Any]:
    """Create ServiceRequest + Task for ``recipient`` and send the consented data with them.
    With ``break_glass`` it is an emergency request (purpose ETREAT): the registry grants it on
    the clinician's stated reason, bound to the envelope, whatever the patient's consents say,
    and audits it as break-glass; the request is labelled as such (``workflow.is_break_glass``)."""
    if kind not in REQUEST_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(sorted(REQUEST_KINDS))}")
    if recipient == ctx.org_id:
        raise BadRequest("cannot refer a patient to this organisation itself")
    ctx.store.read("Patient", patient_id)
    ctx.organisation(recipient)  # unknown recipient → error before anything is written
    sr, task = new_request(
        kind=kind,
        patient_id=patient_id,
        requester=ctx.org_id,
        requester_name=ctx.org_name,
        performer=recipient,
        reason=reason,
        question=question,
        break_glass_reason=break_glass.reason if break_glass is not None else None,
    )
    wanted = set(classes or DEFAULT_CLASSES)
    try:
        # The consent decision first (RegistryUnavailable → 503 with nothing written) …
        disclosure = disclose(
            ctx,
            kind=kind,
            recipient=recipient,
            patient_id=patient_id,
            purpose="ETREAT" if break_glass is not None else "TREAT",
            wanted=wanted,
            workflow=[sr, task],
            title=f"{kind.capitalize()} to {recipient}",
            break_glass=break_glass,
        )
    except ConsentRefused as exc:
        # … a refusal is kept, visibly not sent: the pair with the Task cancelled.
        task = {**task, "status": "cancelled", "statusReason": {"text": exc.diagnostics}}
        task["businessStatus"] = {"text": "refused: no consent"}
        ctx.store.update_many([sr, task], writer=writer)
        raise
    # … then the request itself (one transaction) and the envelope.
    with ctx.timed("out", "workflow_write"):
        task = ctx.store.update_many([sr, task], writer=writer)[1].resource
    state = send(ctx, disclosure, task_uid=task_uid(task), patient_id=patient_id)
    return {
        "task": f"Task/{task['id']}",
        "service_request": f"ServiceRequest/{sr['id']}",
        "envelope_id": disclosure.sealed.header.envelope_id,
        "classes": list(disclosure.classes),
        "resources": disclosure.resource_count,
        "state": state,
        "break_glass": break_glass is not None,
    }


def _other_party(ctx: ExchangeContext, task: dict[str, Any]) -> str:
    requester, owner = task_parties(task)
    if ctx.org_id == requester:
        return owner
    if ctx.org_id == owner:
        return requester
    raise Conflict(f"Task/{task['id']} is not an exchange between this node and another")


def _patient_of(task: dict[str, Any]) -> str:
    ref = task.get("for", {}).get("reference", "")
    if not ref.startswith("Patient/"):
        raise Conflict("the Task names no patient")
    return str(ref.split("/", 1)[1])


def _send_task(ctx: ExchangeContext, task: dict[str, Any]) -> str:
    """A status update: the Task's workflow fields alone (no clinical classes, so no consent
    decision; the receiver refuses anything more) to the other party."""
    patient_id = _patient_of(task)
    disclosure = disclose(
        ctx,
        kind="task-update",
        recipient=_other_party(ctx, task),
        patient_id=patient_id,
        purpose="TREAT",
        wanted=set(),
        workflow=[workflow_task(task)],
        title=f"Task {task['status']}",
    )
    send(ctx, disclosure, task_uid=task_uid(task), patient_id=patient_id)
    return disclosure.sealed.header.envelope_id


def change_status(
    ctx: ExchangeContext,
    task_id: str,
    status: str,
    reason: str = "",
    *,
    writer: str = DEFAULT_WRITER,
) -> dict[str, Any]:
    """Move an exchange Task (accept, reject, start, complete…) and tell the other side."""
    task = ctx.store.read("Task", task_id)
    try:
        check_transition(task["status"], status)
    except ValueError as exc:
        raise Conflict(str(exc)) from None
    task = {**task, "status": status, "lastModified": _now()}
    task["businessStatus"] = {"text": status}
    if reason:
        task["statusReason"] = {"text": reason}
    task = ctx.store.update("Task", task_id, task, writer=writer).resource
    envelope_id = _send_task(ctx, task)
    return {"task": f"Task/{task_id}", "status": status, "envelope_id": envelope_id}


def answer(
    ctx: ExchangeContext, task_id: str, text: str, *, writer: str = DEFAULT_WRITER
) -> dict[str, Any]:
    """The specialist's advice on a consultation: a Communication linked to the Task, which is
    completed; both travel back to the requester."""
    task = ctx.store.read("Task", task_id)
    requester, owner = task_parties(task)
    if owner != ctx.org_id:
        raise Conflict("only the organisation asked can answer this Task")
    if task["status"] not in ("requested", "accepted", "in-progress"):
        raise Conflict(f"a {task['status']} Task cannot be answered")
    comm_id = f"advice-{uuid.uuid4()}"
    communication = {
        "resourceType": "Communication",
        "id": comm_id,
        "status": "completed",
        "subject": {"reference": f"Patient/{_patient_of(task)}"},
        "partOf": [{"reference": f"Task/{task_id}"}],
        "sent": _now(),
        "sender": task["owner"],
        "recipient": [task["requester"]],
        "payload": [{"contentString": text}],
    }
    if task.get("focus"):
        communication["basedOn"] = [task["focus"]]
    task = {
        **task,
        "status": "completed",
        "businessStatus": {"text": "answered"},
        "lastModified": _now(),
        "output": [
            {
                "type": {"text": "advice"},
                "valueReference": {"reference": f"Communication/{comm_id}"},
            }
        ],
    }
    # Consent first (nothing written if the registry is down), then both in one transaction.
    disclosure = disclose(
        ctx,
        kind="advice",
        recipient=requester,
        patient_id=_patient_of(task),
        purpose="TREAT",
        wanted=set(),
        workflow=[communication, task],
        title="Consultation advice",
    )
    with ctx.timed("out", "workflow_write"):
        task = ctx.store.update_many([communication, task], writer=writer)[1].resource
    send(ctx, disclosure, task_uid=task_uid(task), patient_id=_patient_of(task))
    return {
        "task": f"Task/{task_id}",
        "communication": f"Communication/{comm_id}",
        "envelope_id": disclosure.sealed.header.envelope_id,
    }


PULL_PARAMETERS = ("break-glass-pull", "break-glass-reason", "break-glass-user")


def pull_history(
    ctx: ExchangeContext,
    patient_id: str,
    classes: list[str] | None = None,
    *,
    break_glass: BreakGlass | None = None,
) -> dict[str, Any]:
    """Ask every holder of the patient (record locator) for the consented history. First the
    registry's decision for the lookup (purpose and classes, the data to this organisation),
    bound to a fresh lookup id; without the patient's consent it is refused (→ ConsentRefused,
    403) and nothing is asked of anyone. The lookup sends the coordinator only the pseudonym and
    the lookup id: it has the registry decide the bound question again (issue 23).

    With ``break_glass`` (a clinician's stated reason) it is an emergency pull, purpose ETREAT,
    whatever the consents say: the lookup's decision is the registry's pull grant (this
    organisation's clinician and reason, the data to this organisation, bound to the pull's
    lookup id; no reason → 400, not a doctor or nurse → 403, and nothing is asked of anyone),
    which the coordinator has the registry re-admit; then a record query to each holder under
    the grant; each holder answers under it too (``answer_query``). All of it is audited at
    the registry as break-glass and listed, flagged, for the patient."""
    patient, pseudo = pseudonym_of(ctx, patient_id)
    # the patient's pseudonyms under older key versions still held (issue 23): the lookup's
    # decision is made under the one the registry knows them by, and so is everything after it
    # (the lookup, its re-check by the coordinator, each record query and its decision)
    older = older_pseudonyms(ctx, patient, pseudo)
    offered = {"candidates": older} if older else {}
    wanted = sorted(set(classes or DEFAULT_CLASSES))
    purpose, pull, lookup_id = "TREAT", "", str(uuid.uuid4())
    if break_glass is not None:
        if not break_glass.reason.strip():
            raise BadRequest("break-glass (ETREAT) needs a stated reason")
        purpose, pull = "ETREAT", lookup_id  # the pull grant is the lookup's decision
        granted = registry_decision(
            lambda: ctx.consent.decide(
                pseudo, ctx.org_id, "ETREAT", wanted, lookup_id=pull,
                **emergency_parameters(break_glass), **offered,
            )
        )  # fmt: skip
        if not granted.permit:
            raise ConsentRefused(f"consent registry: {granted.reason}")
        pseudo = decided_pseudonym(ctx, granted, pseudo, patient_id)
        log.info("break-glass pull %s granted (patient Patient/%s)", pull, patient_id)
    else:  # the lookup's own decision: data of these classes to this organisation
        allowed = registry_decision(
            lambda: ctx.consent.decide(
                pseudo, ctx.org_id, purpose, wanted, lookup_id=lookup_id, **offered
            )
        )
        if not allowed.permit:
            raise ConsentRefused(f"consent registry refused the lookup: {allowed.reason}")
        pseudo = decided_pseudonym(ctx, allowed, pseudo, patient_id)
    try:
        holders = ctx.client.lookup(pseudo, lookup_id=lookup_id)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            raise ConsentRefused(
                f"the record locator refused the lookup: {exc.details()}"
            ) from None
        raise
    queries = []
    for holder in holders:
        # The header names the patient by the routing pseudonym of this pair; the regional
        # one travels inside. The decision is bound to the envelope id so the coordinator can
        # have it re-decided without knowing the patient (data flows to this organisation).
        header = EnvelopeHeader.new(
            kind="record-query",
            sender=ctx.org_id,
            recipient=holder,
            patient_pseudonym=ctx.pseudonymiser.routing(pseudo, ctx.org_id, holder),
        )
        # Purpose and classes travel inside: the clear header carries neither (issue 23).
        query: dict[str, Any] = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueString": pseudo},
                {"name": "purpose", "valueCode": purpose},
                *({"name": "class", "valueCode": c} for c in wanted),
            ],
        }
        if break_glass is not None:  # the holder answers under the grant, and shows why
            query["parameter"] += [
                {"name": "break-glass-pull", "valueId": pull},
                {"name": "break-glass-reason", "valueString": break_glass.reason},
                {"name": "break-glass-user", "valueString": break_glass.user},
            ]
        under = {"pull": pull} if pull else {}
        decision = ctx.consent.decide(
            pseudo, ctx.org_id, purpose, wanted, envelope_id=header.envelope_id, **under
        )
        if not decision.permit:
            queries.append(
                {"holder": holder, "envelope_id": header.envelope_id,
                 "state": f"refused: {decision.reason}"}
            )  # fmt: skip
            continue
        sealed = seal_for(ctx, header, json.dumps(query).encode())
        try:
            state = send(ctx, sealed, patient_id=patient_id)
        except ConsentRefused as exc:
            state = f"refused: {exc.diagnostics}"
        queries.append({"holder": holder, "envelope_id": header.envelope_id, "state": state})
    return {
        "patient": f"Patient/{patient_id}",
        "holders": holders,
        "queries": queries,
        "break_glass": break_glass is not None,
        "pull": pull or None,
        "lookup": lookup_id,  # what the lookup's registry decision is bound to
    }


def answer_query(
    ctx: ExchangeContext, requester: str, pseudo: str, query: dict[str, Any]
) -> str | None:
    """A holder answers a record query with what the patient's consent permits (its own check),
    for the purpose the query states inside (``TREAT`` when it states none). A break-glass
    (ETREAT) query is answered under the pulling clinician's grant, which the registry checks
    (``BreakGlassPull``); a query without one is not answered."""
    purpose = query_parameter(query, "purpose") or "TREAT"
    pull: BreakGlassPull | None = None
    if purpose == "ETREAT":
        if not query_parameter(query, "break-glass-pull"):
            log.info("record query from %s under ETREAT names no pull grant", requester)
            return None
        pull = BreakGlassPull(query_parameter(query, "break-glass-pull"))
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == pseudo)
        ).first()
    if row is None:
        log.info("record query from %s for an unknown pseudonym; nothing to answer", requester)
        return None
    wanted = {
        str(p.get("valueCode"))
        for p in query.get("parameter", [])
        if p.get("name") == "class" and p.get("valueCode")
    }
    try:
        disclosure = disclose(
            ctx,
            kind="record-answer",
            recipient=requester,
            patient_id=str(row[0]),
            purpose=purpose,
            wanted=wanted,
            title=f"Record answer to {requester}",
            break_glass=pull,
        )
    except (ConsentRefused, BadRequest) as exc:
        log.info("record query from %s refused by consent: %s", requester, exc.diagnostics)
        return None
    send(ctx, disclosure, patient_id=str(row[0]))
    return disclosure.sealed.header.envelope_id


def publish_pseudonyms(ctx: ExchangeContext) -> int:
    """Index every local patient's current pseudonym and publish the list of the current key
    version's to the record locator. Only those: publishing a patient's pseudonym under an
    older version too would show the coordinator the pair (a patient met after a rotation
    appears as two new pseudonyms in one publish), linking the two versions. The locator keeps
    what a node published under an older version before the rotation, so a pull decided under
    that version (the patient's consents are there) finds the holders that knew the patient
    then — not those that met them only after the rotation."""
    found: dict[str, str] = {}
    offset = 0
    while True:
        page = ctx.store.search("Patient", [("_count", "500"), ("_offset", str(offset))])
        for patient, pseudo in zip(
            page.resources, patient_pseudonyms(page.resources, ctx.pseudonymiser), strict=True
        ):
            if pseudo:
                found.setdefault(pseudo, str(patient["id"]))
        offset += len(page.resources)
        if not page.resources or offset >= page.total:
            break
    with ctx.engine.begin() as conn:
        known: set[str] = set(conn.execute(select(pseudonyms.c.pseudonym)).scalars())
        new = [{"pseudonym": p, "patient_id": i} for p, i in found.items() if p not in known]
        if new:
            conn.execute(pseudonyms.insert(), new)
    with ctx.engine.connect() as conn:
        held: list[str] = list(conn.execute(select(pseudonyms.c.pseudonym)).scalars())
    # Only the newest key version's: an older-version pseudonym this node learnt after the
    # rotation (an import's, a decision's) would arrive beside the patient's current one and
    # pair them; those it published before the rotation the locator keeps (locator.publish).
    # Sorted: the order says nothing either.
    newest = newest_key_version(held)
    current = sorted(p for p in held if (pseudonym_key_version(p) or 0) == newest)
    ctx.client.publish(current, replace=True)
    return len(current)
