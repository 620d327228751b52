"""The patient's care pages over issue 15's APIs: education (read, mark read),
appointments (my visits with their reminder, free slots, book, cancel) and questionnaires
(a form built from the Questionnaire's items and options; the server's score shown).

Each page acts through the very functions the ``/patient`` API routes use
(``node.patient.routes``, ``node.patient.booking``): the same readings, the same rules, no
checks written again here. The access is the page seam's
(``node.portal.signin.patient_access``: the patient's own compartment); items are named by
opaque per-session handles, never by ids in URLs."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.patient import booking
from node.patient import routes as patient_api
from node.patient.questionnaires import Questionnaire, load_questionnaires
from node.portal.signin import PREFIX, kit_of, patient_access, router
from servicekit.outcome import BadRequest, Conflict, NotFound

__all__ = ["router"]


def _page(request: Request, template: str, **context: Any) -> Response:
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, template, app_title=settings.name, org_id=settings.org_id, **context
    )


def _resolve(request: Request, handle: str, kind: str) -> str:
    """The id behind a handle of this session (another session's handle → 404)."""
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith(kind + "/"):
        raise NotFound("unknown handle")
    return reference.split("/", 1)[1]


# -- education ----------------------------------------------------------------------------------
@router.get(PREFIX + "/me/education")
async def my_education(request: Request, notice: str = "") -> Response:
    access = patient_access(request, "CarePlan", "read")  # as GET /patient/education
    services = request.app.state.services
    lang = kit_of(request).session(request).lang
    items = await run_in_threadpool(
        patient_api.education_items, services, access, str(access.compartment), lang
    )
    session = kit_of(request).session(request)
    shown = [(session.handle_for(f"Education/{i['id']}"), i) for i in items]
    return _page(request, "my_education.html", items=shown, notice=notice)


@router.post(PREFIX + "/me/education/{handle}/read")
async def read_education(request: Request, handle: str) -> Response:
    access = patient_access(request, "CarePlan", "read")  # as POST /patient/education/{id}/$read
    item_id = _resolve(request, handle, "Education")
    services = request.app.state.services
    await run_in_threadpool(patient_api.mark_read, services, access, item_id)
    return kit_of(request).redirect(f"{PREFIX}/me/education?notice=read")


# -- appointments -------------------------------------------------------------------------------
def _appointments(request: Request, access: Any) -> dict[str, Any]:
    """My booked visits (with the reminder time) and the free slots, each under a handle; read
    by the booking module's own functions, as ``GET /patient/reminders`` and ``/patient/slots``."""
    store = request.app.state.services.store
    session = kit_of(request).session(request)
    visits = booking.reminders(store, str(access.compartment))
    slots = booking.free_slots(store)
    return {
        "visits": [(session.handle_for(v["appointment"]), v) for v in visits],
        "slots": [(session.handle_for(f"Slot/{s['id']}"), s) for s in slots],
    }


@router.get(PREFIX + "/me/appointments")
async def my_appointments(request: Request, notice: str = "") -> Response:
    access = patient_access(request, "Appointment", "read")  # as GET /patient/reminders
    shown = await run_in_threadpool(_appointments, request, access)
    return _page(request, "my_appointments.html", notice=notice, refused="", **shown)


@router.post(PREFIX + "/me/appointments/{handle}/book")
async def book(request: Request, handle: str) -> Response:
    """Book a free slot through ``booking.book`` (as ``POST /patient/appointments/$book``): a
    slot taken meanwhile is the module's 409, shown on the page as a refusal."""
    access = patient_access(request, "Appointment", "create")
    slot_id = _resolve(request, handle, "Slot")
    store = request.app.state.services.store
    try:
        await run_in_threadpool(
            booking.book, store, str(access.compartment), f"Slot/{slot_id}",
            access.principal.writer,
        )  # fmt: skip
    except Conflict:
        shown = await run_in_threadpool(_appointments, request, access)
        return _page(request, "my_appointments.html", status=409, notice="",
                     refused="taken", **shown)  # fmt: skip
    return kit_of(request).redirect(f"{PREFIX}/me/appointments?notice=booked")


@router.post(PREFIX + "/me/appointments/{handle}/cancel")
async def cancel(request: Request, handle: str) -> Response:
    """Cancel one of my visits through ``booking.cancel`` (as ``…/{id}/$cancel``)."""
    access = patient_access(request, "Appointment", "update")
    appointment_id = _resolve(request, handle, "Appointment")
    store = request.app.state.services.store
    await run_in_threadpool(
        booking.cancel, store, str(access.compartment), appointment_id, access.principal.writer
    )
    return kit_of(request).redirect(f"{PREFIX}/me/appointments?notice=cancelled")


# -- questionnaires -----------------------------------------------------------------------------
def _questionnaire(request: Request, handle: str) -> Questionnaire:
    qid = _resolve(request, handle, "Questionnaire")
    found = [q for q in load_questionnaires().values() if q.resource["id"] == qid]
    if not found:
        raise NotFound("unknown questionnaire")
    return found[0]


def _form_items(q: Questionnaire, lang: str) -> list[dict[str, Any]]:
    """The items a patient answers (not the calculated totals), each option by its position."""
    out = []
    for link, item in q.items.items():
        if link in q.calculated or item.get("readOnly"):
            continue
        options = [
            q.text({"text": o["valueCoding"].get("display", ""),
                    "_text": o["valueCoding"].get("_display")}, lang)
            for o in item.get("answerOption") or []
        ]  # fmt: skip
        out.append({"link": link, "type": item.get("type"), "text": q.text(item, lang),
                    "required": bool(item.get("required")), "options": options})  # fmt: skip
    return out


def _answers(q: Questionnaire, form: dict[str, str]) -> list[dict[str, Any]]:
    """The form's fields as QuestionnaireResponse items (the options' codings, the numbers);
    what they may be is ``complete``'s rule (422), not this page's."""
    items: list[dict[str, Any]] = []
    for link, item in q.items.items():
        raw = form.get(link, "").strip()
        if link in q.calculated or not raw:
            continue
        answer: dict[str, Any]
        try:
            if item.get("type") == "choice":
                option = (item.get("answerOption") or [])[int(raw)]
                answer = {"valueCoding": {k: option["valueCoding"][k] for k in ("system", "code")}}
            elif item.get("type") == "integer":
                answer = {"valueInteger": int(raw)}
            else:
                answer = {"valueDecimal": float(raw.replace(",", "."))}
        except (ValueError, IndexError):
            raise BadRequest(f"item {link}: choose an answer or enter a number") from None
        items.append({"linkId": link, "answer": [answer]})
    return items


@router.get(PREFIX + "/me/questionnaires")
async def my_questionnaires(request: Request) -> Response:
    patient_access(request, "QuestionnaireResponse", "create")  # as GET /patient/questionnaires
    session = kit_of(request).session(request)
    shown = [
        (session.handle_for(f"Questionnaire/{q.resource['id']}"),
         q.text({"text": q.resource["title"], "_text": q.resource.get("_title")}, session.lang))
        for q in load_questionnaires().values()
    ]  # fmt: skip
    return _page(request, "my_questionnaires.html", questionnaires=shown)


@router.get(PREFIX + "/me/questionnaires/{handle}")
async def answer_page(request: Request, handle: str) -> Response:
    patient_access(request, "QuestionnaireResponse", "create")
    q = _questionnaire(request, handle)
    lang = kit_of(request).session(request).lang
    title = q.text({"text": q.resource["title"], "_text": q.resource.get("_title")}, lang)
    return _page(request, "questionnaire.html", qhandle=handle, title=title,
                 items=_form_items(q, lang), scores=None)  # fmt: skip


@router.post(PREFIX + "/me/questionnaires/{handle}")
async def answer(request: Request, handle: str) -> Response:
    """Answer through ``node.patient.routes.store_response`` (as ``POST
    /patient/questionnaire-responses``: scored by the server, stored with its Observations),
    then show the computed scores."""
    access = patient_access(request, "QuestionnaireResponse", "create")
    q = _questionnaire(request, handle)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    body = {"resourceType": "QuestionnaireResponse", "questionnaire": q.url,
            "item": _answers(q, fields)}  # fmt: skip
    services = request.app.state.services
    stored, _result = await run_in_threadpool(
        patient_api.store_response, services, access, str(access.compartment), body
    )
    lang = kit_of(request).session(request).lang
    scores = [
        (q.text(q.items[i["linkId"]], lang), i["answer"][0]["valueInteger"])
        for i in stored["item"]
        if i["linkId"] in q.calculated
    ]
    title = q.text({"text": q.resource["title"], "_text": q.resource.get("_title")}, lang)
    return _page(request, "questionnaire.html", qhandle=handle, title=title, items=[],
                 scores=scores)  # fmt: skip
