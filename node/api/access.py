"""Compartment checks for patient-context tokens: the one place that decides whether a single
resource lies inside the caller's patient compartment (searches pass ``compartment_patient`` to
the store instead)."""

from __future__ import annotations

import re

from node.store.validation import valid_id
from servicekit.outcome import BadRequest, NotFound

__all__ = ["ensure_in_compartment", "check_type_name"]

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
