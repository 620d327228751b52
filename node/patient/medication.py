"""Medication check-ins: the patient marks a dose taken or missed against one of their
MedicationRequests; adherence (taken / checked-in doses per request) is what the doctor sees.

A check-in is a FHIR ``MedicationAdministration`` (status ``completed`` = taken, ``not-done``
with statusReason "missed" = missed), ``request`` = the MedicationRequest, ``subject`` and
``performer`` the patient (set by the write rule, node/auth/patient_writes.py). Pure builders
here; the routes are in routes.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from servicekit.outcome import Unprocessable

__all__ = ["check_in", "adherence"]

MISSED = {"text": "missed (reported by the patient)"}


def check_in(request: dict[str, Any], taken: Any, when: Any) -> dict[str, Any]:
    """The MedicationAdministration of one check-in against ``request`` (a stored
    MedicationRequest)."""
    if not isinstance(taken, bool):
        raise Unprocessable('"taken" must be true or false')
    if not isinstance(when, str) or not when:
        raise Unprocessable('"when" (the dose time, ISO 8601) is required')
    med = {
        k: request[k] for k in ("medicationCodeableConcept", "medicationReference") if k in request
    }
    if not med:
        raise Unprocessable("the MedicationRequest names no medication")
    out: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "status": "completed" if taken else "not-done",
        **med,
        "subject": request.get("subject"),
        "effectiveDateTime": when,
        "request": {"reference": f"MedicationRequest/{request['id']}"},
    }
    if not taken:
        out["statusReason"] = [MISSED]
    return out


def adherence(administrations: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per MedicationRequest: doses taken, missed and the share taken (None without check-ins)."""
    out: dict[str, dict[str, Any]] = {}
    for a in administrations:
        ref = (a.get("request") or {}).get("reference")
        if not ref:
            continue
        row = out.setdefault(ref, {"taken": 0, "missed": 0})
        if a.get("status") == "completed":
            row["taken"] += 1
        elif a.get("status") == "not-done":
            row["missed"] += 1
    for row in out.values():
        total = row["taken"] + row["missed"]
        row["adherence"] = round(row["taken"] / total, 3) if total else None
    return out
