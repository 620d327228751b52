"""Which pathways an active Condition enrols its patient in (pure).

ICD-10 codes match by category (``I11.9`` is in ``I11``; any ``http://hl7.org/fhir/sid/icd-10*``
system, so ICD-10-CM too); SNOMED CT codes match exactly (no subsumption: a descendant concept
must be listed in the PlanDefinition's ``useContext`` to enrol). A Condition enrols only when
its ``clinicalStatus`` is active/recurrence/relapse and it is not refuted or entered in error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.care.definitions import Pathway

__all__ = ["enrolling_pathways", "is_active_condition"]

ICD10_PREFIX = "http://hl7.org/fhir/sid/icd-10"
ACTIVE = frozenset({"active", "recurrence", "relapse"})
EXCLUDED = frozenset({"refuted", "entered-in-error"})


def _codes(concept: Mapping[str, Any] | None) -> set[str]:
    return {c.get("code", "") for c in (concept or {}).get("coding", [])}


def is_active_condition(condition: Mapping[str, Any]) -> bool:
    if condition.get("resourceType") != "Condition":
        return False
    if not _codes(condition.get("clinicalStatus")) & ACTIVE:
        return False
    return not _codes(condition.get("verificationStatus")) & EXCLUDED


def _matches(system: str, code: str, listed: tuple[str, str]) -> bool:
    lsys, lcode = listed
    if system.startswith(ICD10_PREFIX) and lsys.startswith(ICD10_PREFIX):
        flat = code.replace(".", "").upper()
        return flat.startswith(lcode.replace(".", "").upper())
    return system == lsys and code == lcode


def enrolling_pathways(condition: Mapping[str, Any], pathways: Iterable[Pathway]) -> list[Pathway]:
    """The pathways an active ``condition`` enrols its patient in (none if not active)."""
    if not is_active_condition(condition):
        return []
    codings = [
        (c.get("system", ""), c.get("code", ""))
        for c in (condition.get("code") or {}).get("coding", [])
    ]
    return [
        p
        for p in pathways
        if any(_matches(s, c, listed) for s, c in codings for listed in p.enrolment)
    ]
