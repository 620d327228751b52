"""The consent policy engine: a pure function from (consents, request) to a decision.

This module imports nothing of ours and does no I/O, so the rule "who may receive which of a
patient's data, for what" lives in exactly one place and can be tested exhaustively.

Semantics (the registry, the coordinator and the nodes all rely on these):

* **Default deny.** Nothing is permitted unless a permit rule of an applicable consent covers it.
* A consent is **applicable** only when it belongs to the patient, its status is ``active`` and
  the request time lies inside its period (start inclusive, end exclusive). Inactive (revoked),
  rejected, expired and not-yet-valid consents do nothing.
* Each consent yields **rules**. The root provision of type ``permit`` is a permit rule; a root
  ``deny`` without constraints is just the base ("deny unless a nested provision permits"); a
  root ``deny`` *with* constraints (actor, purpose or class) is an explicit deny rule. Every
  nested provision is a rule of its own type; fields it leaves unspecified (actors, purposes,
  classes) are inherited from the root provision.
* A rule **applies** to a request when its actors are ``None`` (the whole network) or contain the
  recipient, its purposes are ``None`` or contain the purpose, and its period (if any) contains
  the request time.
* **Deny overrides permit.** An applicable deny rule without classes denies the whole request; one
  with classes removes those classes. The permitted classes are
  ``requested ∩ (union of applicable permits) − (union of applicable denies)``. A non-empty
  subset of the request is a *partial* permit and says which classes were refused.
* Break-glass (``ETREAT`` without a consent) is **not** granted here: the registry handles it on
  a separate, audited path. A consent may of course permit ``ETREAT`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "next_change",
    "PURPOSES",
    "RESOURCE_CLASSES",
    "STATUSES",
    "Period",
    "Provision",
    "ConsentRecord",
    "DecisionRequest",
    "Decision",
    "decide",
    "rules_of",
]

#: v3 ActReason purposes of use the region recognises. ``HQUALIMP`` (health care quality
#: improvement) is the purpose of the authority's regional quality indicators
#: (``federated/indicators``). Like every purpose its default is **deny**: a patient counts in
#: an indicator only while a consent of theirs permits ``HQUALIMP`` to the authority; a region
#: that wants quality improvement as an opt-out use records that permit at enrolment.
PURPOSES = frozenset({"TREAT", "ETREAT", "HRESCH", "HQUALIMP"})

#: FHIR resource types a consent may name as data classes.
RESOURCE_CLASSES = frozenset(
    {
        "AllergyIntolerance",
        "CarePlan",
        "CareTeam",
        "Communication",
        "Condition",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "Goal",
        "Immunization",
        "MedicationAdministration",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Patient",
        "Procedure",
        "ServiceRequest",
    }
)

STATUSES = frozenset({"active", "inactive", "rejected"})

ProvisionType = Literal["permit", "deny"]


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    """A time window; ``None`` ends are open. Start inclusive, end exclusive."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, at: datetime) -> bool:
        at = _aware(at)
        if self.start is not None and at < _aware(self.start):
            return False
        return not (self.end is not None and at >= _aware(self.end))

    def intersect(self, other: Period) -> Period:
        starts = [_aware(t) for t in (self.start, other.start) if t is not None]
        ends = [_aware(t) for t in (self.end, other.end) if t is not None]
        return Period(max(starts) if starts else None, min(ends) if ends else None)

    def is_empty(self) -> bool:
        return self.start is not None and self.end is not None and self.end <= self.start


@dataclass(frozen=True)
class Provision:
    """One rule of a consent. ``None`` means "not restricted by this field".

    ``actors`` are organisation ids of recipients (``None``: the whole network); ``purposes`` are
    ActReason codes; ``classes`` are FHIR resource types; ``period`` is when the rule holds.
    ``data_period`` (root provision only) limits the data to records from that window.
    """

    type: ProvisionType
    actors: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    classes: frozenset[str] | None = None
    period: Period | None = None
    data_period: Period | None = None
    provisions: tuple[Provision, ...] = ()

    def has_constraints(self) -> bool:
        return self.actors is not None or self.purposes is not None or self.classes is not None


@dataclass(frozen=True)
class ConsentRecord:
    """A patient's consent (the internal form of a FHIR ``Consent``)."""

    id: str
    patient: str  # the patient's regional pseudonym
    status: str  # active | inactive | rejected
    provision: Provision
    period: Period | None = None  # when the consent as a whole is valid
    date_time: datetime | None = None


@dataclass(frozen=True)
class DecisionRequest:
    patient: str
    requester: str  # organisation asking
    recipient: str  # organisation that would receive the data
    purpose: str
    classes: frozenset[str]
    at: datetime


@dataclass(frozen=True)
class Decision:
    permit: bool
    classes: frozenset[str]
    consent_ids: tuple[str, ...]
    reason: str
    refused_classes: frozenset[str] = frozenset()
    data_period: Period | None = None
    break_glass: bool = False


@dataclass(frozen=True)
class _Rule:
    consent_id: str
    type: ProvisionType
    actors: frozenset[str] | None
    purposes: frozenset[str] | None
    classes: frozenset[str] | None
    period: Period | None

    def applies(self, request: DecisionRequest) -> bool:
        if self.actors is not None and request.recipient not in self.actors:
            return False
        if self.purposes is not None and request.purpose not in self.purposes:
            return False
        return self.period is None or self.period.contains(request.at)


def rules_of(consent: ConsentRecord) -> list[_Rule]:
    """The rules a consent contributes (see the module docstring)."""
    root = consent.provision
    rules: list[_Rule] = []
    if root.type == "permit" or root.has_constraints():
        rules.append(
            _Rule(consent.id, root.type, root.actors, root.purposes, root.classes, root.period)
        )
    for nested in root.provisions:
        rules.append(
            _Rule(
                consent.id,
                nested.type,
                nested.actors if nested.actors is not None else root.actors,
                nested.purposes if nested.purposes is not None else root.purposes,
                nested.classes if nested.classes is not None else root.classes,
                nested.period if nested.period is not None else root.period,
            )
        )
    return rules


def _applicable(consent: ConsentRecord, request: DecisionRequest) -> bool:
    if consent.patient != request.patient or consent.status != "active":
        return False
    return consent.period is None or consent.period.contains(request.at)


def decide(consents: Iterable[ConsentRecord], request: DecisionRequest) -> Decision:
    """Decide one disclosure request against a patient's consents. Pure; default deny."""
    requested = frozenset(request.classes)
    if not requested:
        return Decision(False, frozenset(), (), "no data classes requested")
    applicable = [c for c in consents if _applicable(c, request)]
    if not applicable:
        return Decision(False, frozenset(), (), "no active consent covers this patient", requested)

    permitted: dict[str, set[str]] = {}  # class → consent ids that permit it
    denied: dict[str, set[str]] = {}  # class → consent ids that deny it
    deny_all: set[str] = set()
    by_id = {c.id: c for c in applicable}
    for consent in applicable:
        for rule in rules_of(consent):
            if not rule.applies(request):
                continue
            hit = requested if rule.classes is None else requested & rule.classes
            if rule.type == "deny":
                if rule.classes is None:
                    deny_all.add(rule.consent_id)
                for cls in hit:
                    denied.setdefault(cls, set()).add(rule.consent_id)
            else:
                for cls in hit:
                    permitted.setdefault(cls, set()).add(rule.consent_id)

    if deny_all:
        ids = tuple(sorted(deny_all))
        return Decision(
            False,
            frozenset(),
            ids,
            f"denied by consent {', '.join(ids)} for {request.purpose} to {request.recipient}",
            requested,
        )
    granted = frozenset(cls for cls in permitted if cls not in denied)
    refused = requested - granted
    deny_ids = {i for cls in refused for i in denied.get(cls, ())}
    if not granted:
        if deny_ids:
            reason = f"requested classes denied by consent {', '.join(sorted(deny_ids))}"
        else:
            reason = (
                f"no consent permits {request.purpose} to {request.recipient} for these classes"
            )
        return Decision(False, frozenset(), tuple(sorted(deny_ids)), reason, requested)

    permit_ids = {i for cls in granted for i in permitted[cls]}
    data_period: Period | None = None
    for cid in sorted(permit_ids):
        dp = by_id[cid].provision.data_period
        if dp is not None:
            data_period = dp if data_period is None else data_period.intersect(dp)
    if data_period is not None and data_period.is_empty():
        return Decision(
            False,
            frozenset(),
            tuple(sorted(permit_ids)),
            "the permitting consents' data periods do not overlap",
            requested,
        )
    ids = tuple(sorted(permit_ids | deny_ids))
    if refused:
        reason = (
            f"partial permit: {len(granted)} of {len(requested)} classes; "
            f"refused {', '.join(sorted(refused))}"
        )
    else:
        reason = f"permitted by consent {', '.join(sorted(permit_ids))}"
    return Decision(True, granted, ids, reason, refused, data_period)


def next_change(consents: Iterable[ConsentRecord], at: datetime) -> datetime | None:
    """The first instant after ``at`` at which a decision over ``consents`` could change without
    any consent being written: the nearest start or end of a consent's or provision's period
    (None: time alone changes nothing). A checker may reuse a decision until then, and only
    while the consents stay as they are (``consent.schema.consent_epoch``)."""
    at = _aware(at)
    bounds: list[datetime] = []

    def walk(provision: Provision) -> None:
        if provision.period is not None:
            bounds.extend(t for t in (provision.period.start, provision.period.end) if t)
        for nested in provision.provisions:
            walk(nested)

    for consent in consents:
        if consent.status != "active":  # only a write (which moves the epoch) revives it
            continue
        if consent.period is not None:
            bounds.extend(t for t in (consent.period.start, consent.period.end) if t)
        walk(consent.provision)
    later = [b for b in (_aware(t) for t in bounds) if b > at]
    return min(later) if later else None
