"""Break-glass grants as the registry's own ledger records them, and the re-admission rule.

A break-glass (``ETREAT``) decision is granted to a named clinician with a stated reason and
bound to the envelope that will carry the data (``env``). The coordinator checks every
data-carrying envelope with the registry before routing and again at delivery; it cannot state
the reason or the clinician (it has neither), so it asks for ``ETREAT`` naming the envelope and
its sender, and the registry *re-admits* only what it already granted: a break-glass entry in
its ledger for that envelope id, patient, sender and recipient, covering every class asked,
granted within :data:`READMIT_WINDOW`. Pure functions over ledger entries; no I/O here.

A break-glass *pull* (a clinician pulling the patient's history from the other holders): the
clinician's organisation asks for ``ETREAT`` with the reason, naming itself as the data's
recipient and a pull id as the envelope — the pull grant, which re-admits its record-locator
lookup. Each record query and each holder's answer is its own envelope: its sender asks for
``ETREAT`` with ``pull`` (the pull grant's envelope id) and no reason, and the registry grants
it on the pull grant (:func:`pull_refusal`: a pull grant — data to the organisation whose
clinician broke the glass —, same patient, the data going to that organisation, classes
covered, within the window), recording it as a break-glass entry of its own for that envelope
(the clinician and the reason of the pull) so the coordinator's checks re-admit it like any.

Such an entry is *carried* (:attr:`Grant.carried_from`: the decision id of the pull grant it
stands on) and never a grant of its own: no pull carries on from it (:func:`pull_refusal`), the
coordinator re-admits it only for its own envelope's stored question (``$recheck``), never as a
grant a caller names (a locator lookup, an envelope without a stored question), and only while
the clinician's pull grant it was carried from is itself within :data:`READMIT_WINDOW` — the
window runs from the clinician's grant, however late a query or answer was asked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trust import audit_events

__all__ = [
    "Grant",
    "READMIT_WINDOW",
    "grants_in",
    "find_grant",
    "readmission_refusal",
    "carried_refusal",
    "pull_refusal",
]

# An emergency whose data has not crossed within a day is no longer the same emergency: the
# clinician asks again (with a reason) rather than the old grant carrying a new delivery.
READMIT_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Grant:
    envelope_id: str
    patient: str
    requester: str  # the organisation whose clinician broke the glass (the envelope's sender)
    recipient: str
    user: str
    role: str
    classes: frozenset[str]
    reason: str
    decision_id: str
    # The decision id of the pull grant this entry was carried from (a record query or answer
    # under a break-glass pull); "" for the clinician's own grant.
    carried_from: str = ""


def _codes(codings: Any) -> set[str]:
    if isinstance(codings, dict):
        codings = [codings]
    return {str(c.get("code")) for c in codings or [] if isinstance(c, dict)}


def _identifier(entity: dict[str, Any]) -> dict[str, Any]:
    ident = entity.get("what", {}).get("identifier", {})
    return ident if isinstance(ident, dict) else {}


def _grant(event: dict[str, Any], patient: str, decision_system: str) -> Grant | None:
    if "BTG" not in _codes(event.get("subtype")):
        return None
    envelope = user = role = reason = decision_id = carried_from = ""
    classes: frozenset[str] = frozenset()
    for entity in event.get("entity", []):
        ident = _identifier(entity)
        details = {d.get("type"): d.get("valueString", "") for d in entity.get("detail") or []}
        system = str(ident.get("system", ""))
        if system == audit_events.ENVELOPE_SYSTEM:
            envelope = str(ident.get("value", ""))
            classes = frozenset(str(details.get("data-classes", "")).split()) - {"-"}
        elif system.startswith(audit_events.USER_SYSTEM + ":"):
            user = str(ident.get("value", ""))
            reason = str(details.get("break-glass-reason", ""))
        elif system == decision_system:
            decision_id = str(ident.get("value", ""))
            role = str(details.get("acting-role", ""))
            carried_from = str(details.get("pull", ""))
    orgs = {}
    for agent in event.get("agent", []):
        ident = agent.get("who", {}).get("identifier", {})
        if ident.get("system") == audit_events.ORG_SYSTEM:
            for code in _codes(agent.get("type", {}).get("coding")):
                orgs[code] = str(ident.get("value"))
    if not envelope or envelope == "none" or not reason:
        return None
    return Grant(
        envelope_id=envelope,
        patient=patient,
        requester=orgs.get("110153", ""),
        recipient=orgs.get("IRCP", ""),
        user=user,
        role=role,
        classes=classes,
        reason=reason,
        decision_id=decision_id,
        carried_from=carried_from,
    )


def grants_in(entries: Iterable[tuple[dict[str, Any], str]], decision_system: str) -> list[Grant]:
    """The break-glass grants among ``(event, patient pseudonym)`` ledger entries."""
    return [g for event, patient in entries if (g := _grant(event, patient, decision_system))]


def find_grant(grants: Iterable[Grant], envelope_id: str) -> Grant | None:
    for grant in grants:
        if grant.envelope_id == envelope_id:
            return grant
    return None


def _hours() -> int:
    return int(READMIT_WINDOW.total_seconds() // 3600)


def carried_refusal(grant: Grant, recent: Sequence[Grant], *, own_question: bool) -> str | None:
    """Why a carried grant (a pull's query or answer) is not re-admitted (None: it is).
    ``recent``: the patient's grants within the window; ``own_question``: the re-check is of
    the envelope's own stored question (``$recheck``), not a grant named by a caller."""
    if not grant.carried_from:
        return None
    if not own_question:
        return (
            f"the break-glass grant for envelope {grant.envelope_id} was carried from the pull "
            f"grant {grant.carried_from}; it is re-admitted only for its own envelope, "
            "never as a grant of its own"
        )
    original = next((g for g in recent if g.decision_id == grant.carried_from), None)
    if original is None or original.carried_from:
        return (
            f"the break-glass pull grant {grant.carried_from} that envelope "
            f"{grant.envelope_id} was carried from was not granted within {_hours()} h; "
            "break-glass (ETREAT) needs a stated reason and a named clinician"
        )
    return None


def readmission_refusal(
    grant: Grant | None,
    *,
    envelope_id: str,
    patient: str,
    sender: str | None,
    recipient: str,
    classes: frozenset[str],
    recent: Sequence[Grant] = (),
    own_question: bool = False,
) -> str | None:
    """Why an ``ETREAT`` re-check without a reason is refused (None: it re-admits ``grant``).
    A carried grant is re-admitted only for its own question and only while the pull grant it
    was carried from is among ``recent`` (see :func:`carried_refusal`)."""
    if grant is None:
        return (
            f"no break-glass was granted for envelope {envelope_id} within "
            f"{_hours()} h; break-glass (ETREAT) needs a "
            "stated reason and a named clinician"
        )
    carried = carried_refusal(grant, recent, own_question=own_question)
    if carried is not None:
        return carried
    mismatched = [
        name
        for name, ok in (
            ("patient", grant.patient == patient),
            ("sender", sender is not None and grant.requester == sender),
            ("recipient", grant.recipient == recipient),
        )
        if not ok
    ]
    if mismatched:
        return f"the break-glass grant for envelope {envelope_id} is for another {mismatched[0]}"
    beyond = sorted(classes - grant.classes)
    if beyond:
        return f"the break-glass grant for envelope {envelope_id} does not cover {beyond}"
    return None


def pull_refusal(
    grant: Grant | None,
    *,
    pull: str,
    patient: str,
    recipient: str,
    classes: frozenset[str],
) -> str | None:
    """Why an ``ETREAT`` decision under the pull grant ``pull`` is refused (None: granted).
    Only a clinician's own pull grant carries on (its organisation named itself as the data's
    recipient), and only towards that organisation: a referral's grant cannot be turned into a
    pull, and an entry carried from a pull grant is no pull grant (a pull is not renewed)."""
    if grant is None:
        return (
            f"no break-glass pull was granted as {pull} within "
            f"{_hours()} h; break-glass (ETREAT) needs a "
            "stated reason and a named clinician"
        )
    if grant.carried_from:
        return (
            f"the break-glass grant {pull} was carried from the pull grant {grant.carried_from}; "
            "only a clinician's own pull grant carries on"
        )
    if grant.requester != grant.recipient:
        return f"the break-glass grant {pull} is not a pull (its data went to another party)"
    if grant.patient != patient:
        return f"the break-glass pull {pull} is for another patient"
    if recipient != grant.requester:
        return f"the break-glass pull {pull} brings data only to {grant.requester}"
    beyond = sorted(classes - grant.classes)
    if beyond:
        return f"the break-glass pull {pull} does not cover {beyond}"
    return None
