"""A patient's disclosure list, read from the registry's audit ledger.

What counts as a disclosure of the patient's data (documented in consent/README.md):

* ``authorised`` — every *permit* decision this registry issued (the registry derives these from
  its own decisions; a permit is the licence a node needs before data may leave it);
* ``break-glass`` — every ETREAT emergency decision (always listed, flagged);
* ``reported`` — disclosures a node or the coordinator reported having *performed*
  (``POST /disclosures``), e.g. the envelope that carried the data.

Refused requests are audited too but are not disclosures; they are listed only on request
(``include_refused``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from consent.decisions import DECISION_SYSTEM
from trust import audit_events
from trust.audit_ledger import AuditLedger, LedgerEntry

__all__ = ["Disclosure", "list_disclosures", "report_disclosure"]

_ORG = audit_events.ORG_SYSTEM


@dataclass(frozen=True)
class Disclosure:
    seq: int
    when: str
    kind: str  # authorised | break-glass | reported | reported-unlicensed | refused
    requester: str
    recipient: str
    purpose: str
    classes: list[str]
    break_glass: bool
    decision_id: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _codes(items: list[dict[str, Any]] | None) -> set[str]:
    return {str(c.get("code")) for c in items or []}


def _agent_org(event: dict[str, Any], type_code: str) -> str:
    for agent in event.get("agent", []):
        if type_code in _codes(agent.get("type", {}).get("coding")):
            ident = agent.get("who", {}).get("identifier", {})
            if ident.get("system") == _ORG:
                return str(ident.get("value"))
    return ""


def _detail(event: dict[str, Any], name: str) -> str | None:
    for entity in event.get("entity", []):
        for d in entity.get("detail", []) or []:
            if d.get("type") == name:
                return str(d.get("valueString", ""))
    return None


def _decision_id(event: dict[str, Any]) -> str | None:
    for entity in event.get("entity", []):
        ident = entity.get("what", {}).get("identifier", {})
        if ident.get("system") == DECISION_SYSTEM:
            return str(ident.get("value"))
    return None


def _parse(entry: LedgerEntry) -> Disclosure | None:
    event = entry.event
    subtypes = _codes(event.get("subtype"))
    type_code = str(event.get("type", {}).get("code", ""))
    if type_code == "110106":  # Export: a disclosure (reported) or break-glass
        if "BTG" in subtypes:
            kind = "break-glass"
        elif event.get("outcome") == audit_events.SUCCESS:
            kind = "reported"
        else:
            kind = "reported-unlicensed"  # reported without a decision that covers it
    elif "AuthZ-Consent" in subtypes:
        kind = "authorised" if event.get("outcome") == audit_events.SUCCESS else "refused"
    else:
        return None
    purposes = [
        str(c.get("code")) for p in event.get("purposeOfEvent", []) for c in p.get("coding", [])
    ]
    classes = (_detail(event, "data-classes") or "").split()
    return Disclosure(
        seq=entry.seq,
        when=entry.recorded_at,
        kind=kind,
        requester=_agent_org(event, "110153"),
        recipient=_agent_org(event, "IRCP"),
        purpose=purposes[0] if purposes else "",
        classes=[c for c in classes if c != "-"],
        break_glass=kind == "break-glass",
        decision_id=_decision_id(event),
        reason=_detail(event, "break-glass-reason") or str(event.get("outcomeDesc", "")),
    )


def list_disclosures(
    ledger: AuditLedger, pseudonym: str, *, include_refused: bool = False
) -> list[Disclosure]:
    out = []
    for entry in ledger.entries(patient_pseudonym=pseudonym):
        item = _parse(entry)
        if item is None or (item.kind == "refused" and not include_refused):
            continue
        out.append(item)
    return out


def report_disclosure(
    ledger: AuditLedger,
    *,
    reporter: str,
    patient: str,
    recipient: str,
    purpose: str,
    classes: list[str],
    envelope_id: str | None,
    decision_id: str | None,
    user: str | None,
    observer: str,
    covered: bool | None = None,
) -> int:
    """Record a performed disclosure; ``covered=False`` (not licensed by the decision given)
    is recorded with a minor-failure outcome so it stands out in the ledger."""
    event = audit_events.disclosure(
        sender=reporter,
        recipient=recipient,
        purpose=purpose,
        classes=classes,
        patient_pseudonym=patient,
        observer=observer,
        envelope_id=envelope_id,
        user=user,
        outcome=audit_events.SUCCESS if covered is not False else audit_events.MINOR_FAILURE,
    )
    if decision_id:
        event["entity"].append(
            {"what": {"identifier": {"system": DECISION_SYSTEM, "value": decision_id}}}
        )
    return ledger.append(event, patient_pseudonym=patient).seq
