"""The internal consent model: the engine's dataclasses plus the validation every entry point uses.

The dataclasses themselves live in :mod:`consent.policy` (so the engine imports nothing); this
module adds the rules a stored consent must satisfy and raises `servicekit.outcome.BadRequest`
naming the offending field (as a FHIRPath expression) when one is broken.
"""

from __future__ import annotations

import re

from consent.policy import (
    PURPOSES,
    RESOURCE_CLASSES,
    STATUSES,
    ConsentRecord,
    Decision,
    DecisionRequest,
    Period,
    Provision,
)
from servicekit.outcome import BadRequest

__all__ = [
    "PURPOSES",
    "RESOURCE_CLASSES",
    "STATUSES",
    "ConsentRecord",
    "Decision",
    "DecisionRequest",
    "Period",
    "Provision",
    "validate_record",
    "check_pseudonym",
    "check_org_id",
    "check_purpose",
    "check_classes",
    "check_period",
]

_PSEUDONYM = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ORG_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_pseudonym(value: object, field: str = "Consent.patient") -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field} is required (the patient's pseudonym)", expression=[field])
    if not _PSEUDONYM.match(value):
        raise BadRequest(f"{field} is not a valid pseudonym", expression=[field])
    return value


def check_org_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not _ORG_ID.match(value):
        raise BadRequest(f"{field} is not a valid organisation id", expression=[field])
    return value


def check_purpose(value: object, field: str) -> str:
    if value not in PURPOSES:
        raise BadRequest(
            f"{field}: unknown purpose {value!r} (allowed: {', '.join(sorted(PURPOSES))})",
            expression=[field],
        )
    return str(value)


def check_classes(values: object, field: str) -> frozenset[str]:
    if not isinstance(values, list | tuple | set | frozenset):
        raise BadRequest(f"{field} must be a list of resource types", expression=[field])
    for i, value in enumerate(values):
        if value not in RESOURCE_CLASSES:
            raise BadRequest(
                f"{field}[{i}]: unknown or unsupported data class {value!r}",
                expression=[f"{field}[{i}]"],
            )
    return frozenset(values)


def check_period(period: Period | None, field: str) -> None:
    if period is None or period.start is None or period.end is None:
        return
    if period.end < period.start:
        raise BadRequest(f"{field}: period ends before it starts", expression=[field])


def _check_provision(p: Provision, path: str, *, nested: bool) -> None:
    if p.type not in ("permit", "deny"):
        raise BadRequest(f"{path}.type must be permit or deny", expression=[f"{path}.type"])
    for actor in p.actors or ():
        check_org_id(actor, f"{path}.actor")
    if p.actors is not None and not p.actors:
        raise BadRequest(f"{path}.actor is empty", expression=[f"{path}.actor"])
    for purpose in p.purposes or ():
        check_purpose(purpose, f"{path}.purpose")
    if p.classes is not None:
        if not p.classes:
            raise BadRequest(f"{path}.class is empty", expression=[f"{path}.class"])
        check_classes(sorted(p.classes), f"{path}.class")
    check_period(p.period, f"{path}.period")
    check_period(p.data_period, f"{path}.dataPeriod")
    if nested:
        if p.provisions:
            raise BadRequest(
                f"{path}.provision: only one level of nested provisions is supported",
                expression=[f"{path}.provision"],
            )
        if p.data_period is not None:
            raise BadRequest(
                f"{path}.dataPeriod is only supported on the root provision",
                expression=[f"{path}.dataPeriod"],
            )
    for i, child in enumerate(p.provisions):
        _check_provision(child, f"{path}.provision[{i}]", nested=True)


def validate_record(record: ConsentRecord) -> ConsentRecord:
    """Raise BadRequest (naming the field) unless ``record`` is a consent we can store."""
    check_pseudonym(record.patient)
    if record.status not in STATUSES:
        raise BadRequest(
            f"Consent.status must be one of {', '.join(sorted(STATUSES))}",
            expression=["Consent.status"],
        )
    check_period(record.period, "Consent.provision.period")
    _check_provision(record.provision, "Consent.provision", nested=False)
    return record
