"""REST endpoints for doctors: create referral/consultation, list inbox and outbox, accept,
reject, start, complete, answer, pull a patient's history. Every route checks its scope."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import grpc
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from node.auth.deps import Principal, require_scope
from node.exchange.context import ExchangeContext
from node.exchange.egress import BreakGlass
from node.exchange.service import (
    answer,
    change_status,
    publish_pseudonyms,
    pull_history,
    request_exchange,
)
from node.exchange.tables import inbound, outbound
from servicekit.outcome import FhirError, NotFound, ServiceUnavailable

__all__ = ["router"]

router = APIRouter(prefix="/exchange", tags=["exchange"])


def _ctx(request: Request) -> ExchangeContext:
    ctx = getattr(request.app.state, "exchange", None)
    if ctx is None:
        raise ServiceUnavailable("this node is not connected to a coordinator")
    return ctx  # type: ignore[no-any-return]


def _coordinator_errors(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A coordinator that cannot be reached or refuses a lookup → a clear OperationOutcome.
    (The consent registry's outages arrive as consent.client.RegistryUnavailable, a 503.)"""
    try:
        return work()
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"coordinator: {exc.details()}") from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ServiceUnavailable("the coordinator cannot be reached; try again") from None
        raise FhirError(f"coordinator refused ({code.name}): {exc.details()}", status=502) from None


def _ref_id(ref: str, rtype: str) -> str:
    prefix = f"{rtype}/"
    return ref[len(prefix) :] if ref.startswith(prefix) else ref


class RequestIn(BaseModel):
    kind: Literal["referral", "consultation"]
    patient: str = Field(description="Patient/{id} or id")
    recipient: str
    reason: str = Field(min_length=1, max_length=2000)
    question: str = Field(default="", max_length=4000)
    classes: list[str] | None = None
    # Break-glass: an emergency request (purpose ETREAT) whatever the patient's consents say;
    # the consent registry requires the stated reason and a doctor or nurse, and audits it.
    emergency: bool = False
    break_glass_reason: str = Field(default="", max_length=500)


class StatusIn(BaseModel):
    reason: str = Field(default="", max_length=2000)


class AnswerIn(BaseModel):
    text: str = Field(min_length=1, max_length=8000)


class PullIn(BaseModel):
    patient: str
    classes: list[str] | None = None
    # Break-glass pull (purpose ETREAT): the clinician's stated reason; the registry requires
    # it and a doctor or nurse, grants the pull and audits it (node.exchange.service).
    emergency: bool = False
    break_glass_reason: str = Field(default="", max_length=500)


@router.post("/requests", status_code=201)
def create_request(
    body: RequestIn,
    request: Request,
    _p: Principal = Depends(require_scope("Task", "create")),
) -> dict[str, Any]:
    ctx = _ctx(request)
    return _coordinator_errors(
        lambda: request_exchange(
            ctx,
            kind=body.kind,
            patient_id=_ref_id(body.patient, "Patient"),
            recipient=body.recipient,
            reason=body.reason,
            question=body.question,
            classes=body.classes,
            writer=_p.writer,
            break_glass=(
                BreakGlass(reason=body.break_glass_reason.strip(), role=_p.role, user=_p.subject)
                if body.emergency
                else None
            ),
        )
    )


@router.post("/tasks/{task_id}/answer")
def task_answer(
    task_id: str,
    body: AnswerIn,
    request: Request,
    _p: Principal = Depends(require_scope("Communication", "create")),
) -> dict[str, Any]:
    ctx = _ctx(request)
    return _coordinator_errors(lambda: answer(ctx, task_id, body.text, writer=_p.writer))


@router.post("/tasks/{task_id}/{action}")
def task_action(
    task_id: str,
    action: Literal["accept", "reject", "start", "complete", "cancel"],
    request: Request,
    body: StatusIn | None = None,
    _p: Principal = Depends(require_scope("Task", "update")),
) -> dict[str, Any]:
    status = {
        "accept": "accepted",
        "reject": "rejected",
        "start": "in-progress",
        "complete": "completed",
        "cancel": "cancelled",
    }[action]
    ctx = _ctx(request)
    return _coordinator_errors(
        lambda: change_status(ctx, task_id, status, body.reason if body else "", writer=_p.writer)
    )


@router.post("/pulls")
def pull(
    body: PullIn,
    request: Request,
    _p: Principal = Depends(require_scope("Patient", "read")),
) -> dict[str, Any]:
    ctx = _ctx(request)
    emergency = (
        BreakGlass(reason=body.break_glass_reason.strip(), role=_p.role, user=_p.subject)
        if body.emergency
        else None
    )
    return _coordinator_errors(
        lambda: pull_history(
            ctx, _ref_id(body.patient, "Patient"), body.classes, break_glass=emergency
        )
    )


@router.post("/publish")
def publish(
    request: Request, _p: Principal = Depends(require_scope("Patient", "search"))
) -> dict[str, Any]:
    ctx = _ctx(request)
    return _coordinator_errors(lambda: {"published": publish_pseudonyms(ctx)})


@router.get("/inbox")
def list_inbox(
    request: Request, _p: Principal = Depends(require_scope("Task", "search"))
) -> dict[str, Any]:
    ctx = _ctx(request)
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(inbound).order_by(inbound.c.received_at.desc()).limit(200)).all()
    return {"envelopes": [dict(r._mapping) for r in rows]}


@router.get("/outbox")
def list_outbox(
    request: Request, _p: Principal = Depends(require_scope("Task", "search"))
) -> dict[str, Any]:
    ctx = _ctx(request)
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(outbound).order_by(outbound.c.created_at.desc()).limit(200)
        ).all()
    out = []
    for r in rows:
        item = {k: v for k, v in r._mapping.items() if k != "sealed"}
        item["classes"] = json.loads(item["classes"])
        if r.state == "sent":
            try:
                st = ctx.client.status(r.envelope_id)
                item["coordinator_state"], item["coordinator_reason"] = st.state, st.reason
            except grpc.RpcError as exc:
                item["coordinator_state"] = f"unknown ({exc.code().name})"
        out.append(item)
    return {"envelopes": out}
