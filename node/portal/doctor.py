"""The doctor's pages: patient panel, a patient's journey (timeline, trends, care plan), the
live alert inbox, referrals and consultations, enrolment, plan adjustment, the one-click remote
follow-up, and break-glass (emergency) requests with a stated reason, shown as such. Each page
authorises through ``node.portal.signin.clinician`` (the API's access seam) and acts through the
API's own functions (``node.care.routes``, ``node.exchange.service``). Patients appear in URLs
only as the session's opaque handles."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from node.care.alerts import recipient_of
from node.care.apply import iso
from node.care.definitions import load_catalog
from node.care.records import practitioner_for_user
from node.care.routes import CLOSE_ACTIONS, alert_stream, close_alert, enrol_patient
from node.exchange.egress import BreakGlass
from node.exchange.service import answer, change_status, pull_history, request_exchange
from node.exchange.tables import inbound
from node.exchange.workflow import BREAK_GLASS_PREFIX, is_break_glass, task_parties, task_uid
from node.portal.app_launch import launch_csp, launchable_apps
from node.portal.journey import load_journey
from node.portal.panel import CONTROL_RANK, load_panel, name_page, person_name, search_all
from node.portal.signin import PREFIX, clinician, kit_of, router
from node.store import FhirStore
from servicekit.outcome import BadRequest, FhirError, NotFound, ServiceUnavailable

__all__ = ["router", "PAGE_SIZE"]

log = logging.getLogger("ipjms.node.portal")
PAGE_SIZE = 100
CATALOG = load_catalog()
PATHWAYS = ("hypertension", "type-2-diabetes", "copd", "heart-failure")
FOLLOW_UP_DAYS = 7
CARE_LEVELS = ("tertiary", "county", "community")  # who may receive a referral
MAX_REASON = 500  # characters of a stated break-glass reason (the registry's own limit)


def _store(request: Request) -> FhirStore:
    return request.app.state.store  # type: ignore[no-any-return]


def _resolve(request: Request, handle: str, rtype: str) -> str:
    """The id behind a handle of this session, for a resource of ``rtype`` (else 404)."""
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith(f"{rtype}/"):
        raise NotFound("unknown handle")
    return reference.split("/", 1)[1]


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, template, status=status, app_title=settings.name, org_id=settings.org_id, **context
    )


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v.strip() for k, v in form.items() if isinstance(v, str)}


# -- panel --------------------------------------------------------------------------------------
@router.get(PREFIX + "/panel")
async def panel(request: Request, pathway: str = "", control: str = "", page: int = 0) -> Response:
    clinician(request, "CarePlan", "search")
    if pathway and pathway not in PATHWAYS or control and control not in CONTROL_RANK:
        raise BadRequest("unknown filter")
    rows = await run_in_threadpool(
        load_panel, _store(request), pathway=pathway or None, control=control or None
    )
    page = max(0, page)
    shown = await run_in_threadpool(
        name_page, _store(request), rows[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    )
    template = "panel_rows.html" if request.headers.get("hx-request") else "panel.html"
    return _render(
        request,
        template,
        rows=shown,
        total=len(rows),
        page=page,
        pages=(len(rows) + PAGE_SIZE - 1) // PAGE_SIZE,
        pathway=pathway,
        control=control,
        pathways=PATHWAYS,
        controls=tuple(CONTROL_RANK),
    )


# -- a patient's journey ------------------------------------------------------------------------
@router.get(PREFIX + "/patients/{handle}")
async def patient_page(request: Request, handle: str, notice: str = "") -> Response:
    principal = clinician(request, "Patient", "read")
    pid = _resolve(request, handle, "Patient")
    journey = await run_in_threadpool(load_journey, _store(request), pid, CATALOG)
    exchange = getattr(request.app.state, "exchange", None)
    recipients: list[Any] = []
    if exchange is not None:
        try:
            recipients = [
                o
                for o in await run_in_threadpool(exchange.client.organisations)
                if o.org_id != exchange.org_id and not o.revoked and o.level in CARE_LEVELS
            ]
        except Exception:  # the coordinator is down: the page still shows the record
            log.warning("directory unavailable for the referral form")
    apps = await run_in_threadpool(launchable_apps, request)
    page = _render(
        request,
        "patient.html",
        apps=apps,
        journey=journey,
        handle_=handle,
        charts=[(t, json.dumps(t.chart(journey.plan_marks))) for t in journey.trends],
        pathways=PATHWAYS,
        recipients=recipients,
        notice=notice,
        role=principal.role,
    )
    page.headers["Content-Security-Policy"] = launch_csp(apps)  # the launch form's targets
    return page


@router.post(PREFIX + "/patients/{handle}/enrol")
async def enrol(request: Request, handle: str) -> Response:
    principal = clinician(request, "CarePlan", "create")
    pid = _resolve(request, handle, "Patient")
    form = await _form(request)
    await run_in_threadpool(
        enrol_patient, request.app.state, principal, pid, form.get("pathway", "")
    )
    return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice=enrolled")


@router.post(PREFIX + "/patients/{handle}/plan")
async def adjust_plan(request: Request, handle: str) -> Response:
    """Adjust a care plan: the doctor's change, with its reason, as the plan's next version
    (marked on the trend charts)."""
    principal = clinician(request, "CarePlan", "update")
    pid = _resolve(request, handle, "Patient")
    form = await _form(request)
    plan_id = _resolve(request, form.get("plan", ""), "CarePlan")
    change = form.get("change", "")
    if not change:
        raise BadRequest("say what changes in the plan")

    def run() -> None:
        store = _store(request)
        plan = store.read("CarePlan", plan_id)
        if plan.get("subject", {}).get("reference") != f"Patient/{pid}":
            raise NotFound("unknown handle")
        note: dict[str, Any] = {"text": change[:2000], "time": iso(datetime.now(UTC))}
        who = practitioner_for_user(store, principal.subject)
        if who:
            note["authorReference"] = {"reference": who}
        body = {**plan, "note": [*plan.get("note", []), note]}
        store.update(
            "CarePlan",
            plan_id,
            body,
            if_match=f'W/"{plan["meta"]["versionId"]}"',
            writer=principal.writer,
        )

    await run_in_threadpool(run)
    return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice=adjusted")


@router.post(PREFIX + "/patients/{handle}/follow-up")
async def remote_follow_up(request: Request, handle: str) -> Response:
    """One click: a message to the patient, a task for them (today's readings), and a
    follow-up visit booked — in one transaction."""
    principal = clinician(request, "Communication", "create")
    for rtype in ("Task", "Appointment"):
        clinician(request, rtype, "create")
    pid = _resolve(request, handle, "Patient")

    def run() -> None:
        store = _store(request)
        store.read("Patient", pid)
        who = practitioner_for_user(store, principal.subject)
        now = datetime.now(UTC)
        visit = (now + timedelta(days=FOLLOW_UP_DAYS)).replace(minute=0, second=0, microsecond=0)
        patient = {"reference": f"Patient/{pid}"}
        sender = {"reference": who} if who else None
        message: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"text": "remote-follow-up"}],
            "subject": patient,
            "recipient": [patient],
            "sent": iso(now),
            "payload": [
                {
                    "contentString": "Your care team asks for today's readings; a follow-up "
                    f"visit is booked for {visit.date().isoformat()}."
                }
            ],
        }
        task: dict[str, Any] = {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"text": "remote-follow-up"},
            "description": "Record today's readings and answer the follow-up questions",
            "for": patient,
            "owner": patient,
            "authoredOn": iso(now),
            "restriction": {"period": {"end": iso(now + timedelta(days=1))}},
        }
        appointment: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "booked",
            "description": "Follow-up visit",
            "start": iso(visit),
            "end": iso(visit + timedelta(minutes=20)),
            "participant": [{"actor": patient, "status": "accepted"}],
        }
        if sender:
            message["sender"] = sender
            task["requester"] = sender
            appointment["participant"].append({"actor": sender, "status": "accepted"})
        entries = [
            {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for r in (message, task, appointment)
        ]
        store.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            writer=principal.writer,
        )

    await run_in_threadpool(run)
    return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice=follow-up")


def _connected_exchange(request: Request) -> Any:
    """The node's exchange client, or 503 when this node has no coordinator."""
    exchange = getattr(request.app.state, "exchange", None)
    if exchange is None:
        raise ServiceUnavailable("this node is not connected to a coordinator")
    return exchange


async def _send_exchange(
    request: Request, handle: str, *, emergency: bool, notices: tuple[str, str, str]
) -> Response:
    """A referral or consultation from the patient page (``emergency``: break-glass, on the
    clinician's stated reason). ``notices``: (sent, refused by consent, invalid input)."""
    principal = clinician(request, "Task", "create")
    pid = _resolve(request, handle, "Patient")
    form = await _form(request)
    exchange = _connected_exchange(request)
    kind = form.get("kind", "referral")
    stated = form.get("reason", "")
    extra: dict[str, Any] = (
        {"break_glass": BreakGlass(reason=stated, role=principal.role, user=principal.subject)}
        if emergency
        else {"question": form.get("question", "")}
    )
    sent, refused, invalid = notices
    try:
        await run_in_threadpool(
            lambda: request_exchange(
                exchange,
                kind=kind,
                patient_id=pid,
                recipient=form.get("recipient", ""),
                reason=stated or kind,
                writer=principal.writer,
                **extra,
            )
        )
    except FhirError as exc:
        if exc.status not in (400, 403, 409):
            raise
        notice = refused if exc.status == 403 else invalid
        return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice={notice}")
    return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice={sent}")


@router.post(PREFIX + "/patients/{handle}/refer")
async def refer(request: Request, handle: str) -> Response:
    return await _send_exchange(
        request, handle, emergency=False, notices=("referred", "refused", "invalid")
    )


@router.post(PREFIX + "/patients/{handle}/break-glass")
async def break_glass(request: Request, handle: str) -> Response:
    """Emergency access: a referral or consultation sent whatever the patient's consents say,
    on this clinician's stated reason. The consent registry decides whether it may (a reason,
    a doctor or nurse), audits it as break-glass and shows it to the patient."""
    return await _send_exchange(
        request,
        handle,
        emergency=True,
        notices=("break-glass", "break-glass-refused", "break-glass-invalid"),
    )


@router.post(PREFIX + "/patients/{handle}/break-glass-pull")
async def break_glass_pull(request: Request, handle: str) -> Response:
    """Emergency pull of the patient's history from the other institutions that hold it,
    whatever the patient's consents say, on this clinician's stated reason: the same record
    locator and record queries as an ordinary pull (``node.exchange.service.pull_history``)
    under the registry's break-glass grant. Without a reason nothing is asked of anyone."""
    principal = clinician(request, "Patient", "read")
    pid = _resolve(request, handle, "Patient")
    form = await _form(request)
    exchange = _connected_exchange(request)
    stated = form.get("reason", "")
    if not stated or len(stated) > MAX_REASON:
        return kit_of(request).redirect(
            f"{PREFIX}/patients/{handle}?notice=break-glass-pull-invalid"
        )
    emergency = BreakGlass(reason=stated, role=principal.role, user=principal.subject)
    try:
        await run_in_threadpool(lambda: pull_history(exchange, pid, break_glass=emergency))
    except FhirError as exc:
        if exc.status not in (400, 403, 409):
            raise
        notice = "break-glass-pull-refused" if exc.status == 403 else "break-glass-pull-invalid"
        return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice={notice}")
    return kit_of(request).redirect(f"{PREFIX}/patients/{handle}?notice=break-glass-pull")


# -- the alert inbox ----------------------------------------------------------------------------
def _my_open_alerts(store: FhirStore, username: str) -> list[dict[str, Any]]:
    """The open alerts addressed to this doctor (or to no one), most severe first."""
    me = practitioner_for_user(store, username)
    issues, included = search_all(
        store,
        "DetectedIssue",
        [("status", "preliminary"), ("_include", "DetectedIssue:patient")],
    )
    names = {f"Patient/{p['id']}": p for p in included if p.get("resourceType") == "Patient"}
    issues = [i for i in issues if recipient_of(i) in (me, None)]
    rank = {"high": 0, "moderate": 1, "low": 2}
    issues.sort(key=lambda i: (rank.get(i.get("severity", "low"), 3), i.get("identifiedDateTime")))
    return [
        {
            "issue": i,
            "patient": i["patient"]["reference"],
            "name": person_name(names.get(i["patient"]["reference"], {})),
        }
        for i in issues
    ]


@router.get(PREFIX + "/alerts")
async def alerts(request: Request) -> Response:
    principal = clinician(request, "DetectedIssue", "search")
    rows = await run_in_threadpool(_my_open_alerts, _store(request), principal.subject)
    template = "alerts_list.html" if request.headers.get("hx-request") else "alerts.html"
    return _render(request, template, alerts=rows)


@router.get(PREFIX + "/alerts/stream")
async def alerts_stream(request: Request) -> Response:
    principal = clinician(request, "DetectedIssue", "search")
    return await alert_stream(request, principal)


@router.post(PREFIX + "/alerts/{handle}/{verb}")
async def close(request: Request, handle: str, verb: str) -> Response:
    principal = clinician(request, "DetectedIssue", "update")
    if verb not in CLOSE_ACTIONS:
        raise NotFound("no such action")
    rid = _resolve(request, handle, "DetectedIssue")
    form = await _form(request)
    await run_in_threadpool(
        close_alert, _store(request), principal, rid, verb, form.get("text", "")
    )
    if request.headers.get("hx-request"):
        rows = await run_in_threadpool(_my_open_alerts, _store(request), principal.subject)
        return _render(request, "alerts_list.html", alerts=rows)
    return kit_of(request).redirect(f"{PREFIX}/alerts")


# -- referrals and consultations ------------------------------------------------------------------
EXCHANGE_ACTIONS = {"accept", "reject", "start", "complete"}


def _exchange_tasks(store: FhirStore) -> list[dict[str, Any]]:
    tasks, included = search_all(store, "Task", [("_include", "Task:patient")])
    names = {f"Patient/{p['id']}": p for p in included if p.get("resourceType") == "Patient"}
    out: list[dict[str, Any]] = []
    for task in tasks:
        if task_uid(task) is None:  # not an exchange Task (e.g. a care-plan follow-up)
            continue
        requester, owner = task_parties(task)
        out.append(
            {
                "task": task,
                "patient": names.get(task.get("for", {}).get("reference")),
                "name": person_name(names.get(task.get("for", {}).get("reference"), {})),
                "requester": requester,
                "owner": owner,
                "break_glass": is_break_glass(task),
                "notes": [n.get("text", "") for n in task.get("note", []) if n.get("text")],
            }
        )
    out.sort(key=lambda t: str(t["task"].get("authoredOn", "")), reverse=True)
    return out


def _break_glass_pulls(request: Request) -> list[dict[str, Any]]:
    """Break-glass pulls on both sides, from the exchange inbox: the answers this node received
    under break-glass and the break-glass record queries it answered (newest first)."""
    exchange = getattr(request.app.state, "exchange", None)
    if exchange is None:
        return []
    t = inbound
    with exchange.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.kind, t.c.sender, t.c.detail, t.c.patient_id, t.c.received_at)
            .where(
                t.c.kind.in_(("record-query", "record-answer")),
                t.c.detail.startswith(BREAK_GLASS_PREFIX),
            )
            .order_by(t.c.received_at.desc())
            .limit(50)
        ).all()
    store = _store(request)
    out: list[dict[str, Any]] = []
    for row in rows:
        patient = None
        if row.patient_id:
            try:
                patient = store.read("Patient", row.patient_id)
            except FhirError:
                patient = None
        out.append(
            {
                "kind": row.kind,
                "sender": row.sender,
                "detail": row.detail,
                "at": datetime.fromtimestamp(row.received_at, UTC).isoformat(),
                "patient": patient,
                "name": person_name(patient or {}),
            }
        )
    return out


@router.get(PREFIX + "/referrals")
async def referrals(request: Request) -> Response:
    clinician(request, "Task", "search")
    rows = await run_in_threadpool(_exchange_tasks, _store(request))
    clinician(request, "Patient", "read")
    pulls = await run_in_threadpool(_break_glass_pulls, request)
    org_id = request.app.state.services.settings.org_id
    return _render(request, "referrals.html", tasks=rows, me=org_id, pulls=pulls)


@router.post(PREFIX + "/referrals/{handle}/{action}")
async def referral_action(request: Request, handle: str, action: str) -> Response:
    principal = clinician(request, "Task", "update")
    tid = _resolve(request, handle, "Task")
    form = await _form(request)
    exchange = _connected_exchange(request)
    if action == "answer":
        clinician(request, "Communication", "create")
        text = form.get("text", "")
        if not text:
            raise BadRequest("the answer is empty")
        await run_in_threadpool(lambda: answer(exchange, tid, text, writer=principal.writer))
    elif action in EXCHANGE_ACTIONS:
        status = {
            "accept": "accepted",
            "reject": "rejected",
            "start": "in-progress",
            "complete": "completed",
        }[action]
        await run_in_threadpool(
            lambda: change_status(
                exchange, tid, status, form.get("text", ""), writer=principal.writer
            )
        )
    else:
        raise NotFound("no such action")
    return kit_of(request).redirect(f"{PREFIX}/referrals")
