"""What a patient may write, and how the server stamps it (pure, data + one rule).

The patient role's scopes (``node/auth/roles.py``) say *which types* a patient may create and
update (``patient/Observation.cu`` …). This table says, for each of those types, *where the
patient goes* in the resource — the element that puts it in the patient's compartment — and
*who wrote it*, which the server sets to the patient whatever the client sent. The access seam
(``node/api/access.py: authorise_write``) applies :func:`stamp` to every patient-context
create and update on every route, and :func:`written_by` to the stored version an update
replaces ("update of what the patient wrote").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from servicekit.outcome import Forbidden, Unprocessable

__all__ = ["PatientWrite", "PATIENT_WRITES", "stamp", "written_by"]


@dataclass(frozen=True)
class PatientWrite:
    #: the element (a Reference) naming the patient: the compartment link
    subject: str
    #: the element naming the author, set by the server: a list of References or one Reference
    author: str | None
    author_is_list: bool = False
    #: statuses a patient may give the resource (None: any)
    statuses: frozenset[str] | None = None
    #: the author element holds ``[{"actor": Reference}]`` (MedicationAdministration.performer)
    author_is_actor: bool = False


PATIENT_WRITES: MappingProxyType[str, PatientWrite] = MappingProxyType(
    {
        # home readings: the patient measured it (performer) about themselves (subject)
        "Observation": PatientWrite("subject", "performer", author_is_list=True),
        # questionnaire answers: author and source are the patient
        "QuestionnaireResponse": PatientWrite("subject", "author"),
        # a dose taken (completed) or missed (not-done), checked in by the patient
        "MedicationAdministration": PatientWrite(
            "subject",
            "performer",
            author_is_actor=True,
            statuses=frozenset({"completed", "not-done"}),
        ),
        # the patient's own measuring device
        "Device": PatientWrite("patient", None),
        # a visit the patient asks for or cancels; booking a published Slot is $book
        # (node/patient/booking.py), which writes as the node, not as the patient
        "Appointment": PatientWrite(
            "participant", None, statuses=frozenset({"proposed", "cancelled"})
        ),
    }
)


def _ref_patient(ref: Any) -> str | None:
    """The Patient id a Reference points at, '' for a reference to anything else, None when
    there is no reference."""
    if not isinstance(ref, dict):
        return None
    text = ref.get("reference")
    if not isinstance(text, str):
        return ""
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return ""


def stamp(resource: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The resource as a patient may store it: in their own compartment, written by them.
    Forbidden when it names another patient (or a type patients may not write), 422 for a
    status a patient may not set."""
    rtype = str(resource.get("resourceType"))
    rule = PATIENT_WRITES.get(rtype)
    if rule is None:
        raise Forbidden(f"patients may not write {rtype}")
    out = copy.deepcopy(resource)
    me = {"reference": f"Patient/{patient_id}"}
    if rule.subject == "participant":
        participants = out.get("participant") or []
        if not isinstance(participants, list):
            raise Unprocessable("Appointment.participant must be a list")
        named = [_ref_patient(p.get("actor")) for p in participants if isinstance(p, dict)]
        if any(pid not in (None, "", patient_id) for pid in named):
            raise Forbidden("a patient may only write their own appointments")
        if patient_id not in named:
            participants.append({"actor": me, "status": "accepted"})
        out["participant"] = participants
    else:
        pid = _ref_patient(out.get(rule.subject))
        if pid not in (None, patient_id):
            raise Forbidden(f"{rtype}.{rule.subject} must be the signed-in patient")
        out[rule.subject] = me
    if rule.author is not None:
        if rule.author_is_actor:
            out[rule.author] = [{"actor": me}]
        else:
            out[rule.author] = [me] if rule.author_is_list else me
        if rtype == "QuestionnaireResponse":
            out["source"] = me
    if rule.statuses is not None and out.get("status") not in rule.statuses:
        allowed = ", ".join(sorted(rule.statuses))
        raise Unprocessable(f"a patient may set {rtype}.status to {allowed} only")
    return out


def written_by(resource: dict[str, Any], patient_id: str) -> bool:
    """Whether a stored resource is the patient's own writing (what they may update)."""
    rule = PATIENT_WRITES.get(str(resource.get("resourceType")))
    if rule is None:
        return False
    me = f"Patient/{patient_id}"
    if rule.subject == "participant":
        return any(
            isinstance(p, dict) and (p.get("actor") or {}).get("reference") == me
            for p in resource.get("participant") or []
        )
    if (resource.get(rule.subject) or {}).get("reference") != me:
        return False
    if rule.author is None:
        return True
    author = resource.get(rule.author)
    refs = author if isinstance(author, list) else [author]
    if rule.author_is_actor:
        refs = [r.get("actor") for r in refs if isinstance(r, dict)]
    return any(isinstance(r, dict) and r.get("reference") == me for r in refs)
