"""Compartment checks for patient-context tokens: the one place that decides whether a single
resource lies inside the caller's patient compartment (searches pass ``compartment_patient`` to
the store instead, after :func:`refuse_other_patients`), and what a patient may write
(:func:`authorise_write`)."""

from __future__ import annotations

import re
from typing import Any

from node.auth.deps import Access
from node.auth.patient_writes import stamp, written_by
from node.store.validation import valid_id
from servicekit.outcome import BadRequest, Forbidden, NotFound

__all__ = ["ensure_in_compartment", "check_type_name", "authorise_write", "refuse_other_patients"]

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


def check_type_name(rtype: str, rid: str | None = None) -> None:
    if not _TYPE_NAME.match(rtype):
        raise NotFound(f"unknown resource type {rtype!r}")
    if rid is not None and not valid_id(rid):
        raise BadRequest(f"{rid!r} is not a valid FHIR id")


def ensure_in_compartment(store: object, rtype: str, rid: str, compartment: str | None) -> None:
    """Raise NotFound (not 403, so existence is not revealed) unless ``rtype/rid`` is in the
    patient compartment ``compartment`` (None = no restriction)."""
    if compartment is None:
        return
    if rtype == "Patient" and rid == compartment:
        return
    result = store.search(  # type: ignore[attr-defined]
        rtype, [("_id", rid), ("_count", "1")], compartment_patient=compartment
    )
    if result.total == 0:
        raise NotFound(f"{rtype}/{rid} is not available to this token")


def authorise_write(
    store: object, access: Access, resource: dict[str, Any], *, replacing: str | None = None
) -> dict[str, Any]:
    """The resource as the caller may write it — the one write rule of every route.

    A token that reaches every resource of the type writes as sent. A patient-context token
    (its scopes already allow this type and interaction: ``require_access``) writes only inside
    its own compartment, with the server naming it as the author
    (``node/auth/patient_writes.py``), and updates only what it wrote itself (``replacing``:
    the id being updated; another patient's resource is 404, existence not revealed)."""
    if access.compartment is None:
        return resource
    rtype = str(resource.get("resourceType"))
    if replacing is not None:
        ensure_in_compartment(store, rtype, replacing, access.compartment)
        current = store.read(rtype, replacing)  # type: ignore[attr-defined]
        if not written_by(current, access.compartment):
            raise Forbidden(f"{rtype}/{replacing} was not written by this patient")
    return stamp(resource, access.compartment)


_PATIENT_PARAMS = frozenset({"patient", "subject", "beneficiary", "actor", "participant"})


def refuse_other_patients(
    rtype: str, params: list[tuple[str, str]], compartment: str | None
) -> None:
    """A patient-context search naming another patient is refused (403), not answered with an
    empty page: the token reaches its own compartment only, and asking for more is an error."""
    if compartment is None:
        return
    for name, value in params:
        if "." in name:
            continue  # a chain's value is the target's parameter (a name…), not a patient id;
            # the chained search is bounded by the compartment on both sides (search_query)
        base = name.split(":", 1)[0].split(".", 1)[0]
        for item in value.split(","):
            if "Patient/" in item:
                target = item.rsplit("Patient/", 1)[1].split("/", 1)[0]
            elif base == "patient" or (rtype == "Patient" and base == "_id"):
                target = item
            elif base in _PATIENT_PARAMS and "/" not in item:
                target = item  # a bare id on a reference to patients
            else:
                continue
            if target and target != compartment:
                raise Forbidden("a patient token may search its own compartment only")
