"""The coordinator's consent check, asked before routing and again at delivery.

The rule (one place): the coordinator sees no purpose and no data classes — the clear header
carries neither (issue 23); they are inside the sealed payload, in the registry's signed decision
bound to the envelope id. So it checks consent on that decision: the registry decides the stored
question again *by envelope id*, sender and data recipient (``ConsentClient.recheck``) — before
routing and at delivery, so a revocation in between stops the envelope — and answers only permit
or deny (every class the decision permitted must still be permitted, for the purpose it was asked
for). The coordinator asks under its own name (the registry records the authenticated caller),
so the patient's list shows the coordinator's check.

* Every kind but a task update needs such a bound decision: none (the registry's 404 — an
  envelope sealed by hand) is a deny. Nothing is ever asked by the header's pseudonym: the
  coordinator does not know who the patient is (it holds a routing pseudonym of the
  sender–recipient pair, ``trust.pseudonym.routing_pseudonym``, that the registry cannot
  resolve either).
* A record query asks the holder to disclose to its sender, so its decision is about the sender
  (``data_recipient``); a permit lets it through, and the holder filters what it answers.
* A task update is re-decided like the others when its sender bound a decision to it (it
  carries clinical resources); without one it passes only along an exchange that already
  exists: an earlier referral or consultation for the same patient between the two.

A record-locator lookup is checked the same way (``check_lookup``): the caller bound its
decision to a fresh lookup id, and the registry decides it again by that id, the caller and the
pseudonym looked up — the coordinator hears no purpose and no class of a lookup either.

Break-glass: the registry re-admits only the break-glass it granted for this envelope (same
patient, sender and recipient, every class, within the window; ``consent.break_glass``), and says
so (``break_glass``); a re-admission's reason (clinician, stated reason, the grant's decision id)
is what the routing audit records. It is never reusable at delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.envelope_rules import data_recipient
from trust.envelopes import EnvelopeHeader

__all__ = ["GateDecision", "ConsentOracle", "ConsentGate", "NO_BOUND_DECISION", "NO_BOUND_LOOKUP"]


@dataclass(frozen=True)
class GateDecision:
    permit: bool
    reason: str
    consent_ids: tuple[str, ...] = ()
    unavailable: bool = False  # refused because the registry could not be asked
    # A permit the registry's $recheck marked reusable: it holds while the registry's consent
    # epoch is still this one (no consent written since).
    epoch: str | None = None
    break_glass: bool = False  # a break-glass grant the registry re-admitted

    def still_holds(self, epoch_now: str | None) -> bool:
        """May this routing decision stand at delivery? Only a permit that the registry marked
        reusable, when no consent has been written since (same epoch). Anything else — a
        consent written, no epoch to compare — is decided again."""
        return self.permit and self.epoch is not None and epoch_now == self.epoch


NO_BOUND_DECISION = "no consent decision was bound to this envelope"
NO_BOUND_LOOKUP = "no consent decision was bound to this lookup"


class ConsentOracle(Protocol):
    """What the gate needs of the consent registry (consent.client.ConsentClient fits)."""

    def recheck(self, envelope_id: str, sender: str, recipient: str) -> Any: ...

    def recheck_lookup(self, lookup_id: str, sender: str, patient_pseudonym: str) -> Any: ...


class ConsentGate:
    def __init__(self, oracle: ConsentOracle | None) -> None:
        self.oracle = oracle

    def check(self, header: EnvelopeHeader, *, prior_exchange: Callable[[], bool]) -> GateDecision:
        """``prior_exchange`` is asked only for a task update without a bound decision."""
        update = header.kind == "task-update"
        if self.oracle is None:
            if update:
                return _along_exchange(header, prior_exchange)
            return GateDecision(False, "no consent registry is configured (default deny)")
        try:
            decision = self.oracle.recheck(
                header.envelope_id, header.sender, data_recipient(header)
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 404:  # registry down or refusing us
                return _registry_failure(exc)
            if update:
                return _along_exchange(header, prior_exchange)
            return GateDecision(False, f"{NO_BOUND_DECISION} (default deny)")
        consent_ids = tuple(getattr(decision, "consent_ids", ()) or ())
        reason = getattr(decision, "reason", "") or ""
        if not getattr(decision, "permit", False):
            return GateDecision(False, f"consent refused: {reason or 'no consent'}", consent_ids)
        if getattr(decision, "break_glass", False):
            return GateDecision(
                True, f"break-glass re-admitted: {reason or 'break-glass'}", consent_ids,
                break_glass=True,
            )  # fmt: skip
        if header.kind == "record-query":
            # The holder filters to what is permitted; the query itself may ask for more.
            return GateDecision(True, "consent permits disclosure to the requester", consent_ids)
        return GateDecision(
            True,
            "consent permits the envelope's bound decision",
            consent_ids,
            epoch=getattr(decision, "epoch", None),
        )

    def epoch_now(self) -> str | None:
        """The registry's consent epoch, or None when it cannot be asked (then every routing
        decision is decided again — and, if the registry is down, deferred as before)."""
        if self.oracle is None or not hasattr(self.oracle, "epoch"):
            return None
        try:
            return str(self.oracle.epoch())
        except Exception:  # registry down: the full checks will say so
            return None

    def check_lookup(self, *, patient_pseudonym: str, caller: str, lookup_id: str) -> GateDecision:
        """A record-locator lookup discloses where the patient is treated. The caller bound its
        registry decision to ``lookup_id`` (purpose and classes are there, not in the lookup);
        the registry decides that question again by lookup id, caller and pseudonym — it must be
        a lookup's decision, asked by this caller for this patient, and still permit at least
        one class to the caller for its purpose. Nothing bound to the id (404) is a deny. A
        break-glass pull's lookup id is the clinician's pull grant: the registry re-admits it
        only within the window (``consent.break_glass``) and says so (``break_glass``)."""
        if self.oracle is None:
            return GateDecision(False, "no consent registry is configured (default deny)")
        try:
            decision = self.oracle.recheck_lookup(lookup_id, caller, patient_pseudonym)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return GateDecision(False, f"{NO_BOUND_LOOKUP} (default deny)")
            return _registry_failure(exc)
        consent_ids = tuple(getattr(decision, "consent_ids", ()) or ())
        if not getattr(decision, "permit", False):
            reason = getattr(decision, "reason", "") or "no consent"
            return GateDecision(False, f"consent refused: {reason}", consent_ids)
        if getattr(decision, "break_glass", False):
            reason = getattr(decision, "reason", "") or "break-glass"
            return GateDecision(
                True, f"break-glass re-admitted: {reason}", consent_ids, break_glass=True
            )
        return GateDecision(True, "consent permits disclosure to the caller", consent_ids)


def _along_exchange(header: EnvelopeHeader, prior_exchange: Callable[[], bool]) -> GateDecision:
    """A task update without a bound decision may only travel along an existing exchange; what
    it carries (the Task's workflow fields, no clinical data) is the receiving node's check
    (``node/exchange/inbound.py``): the coordinator cannot see inside."""
    if prior_exchange():
        return GateDecision(True, "status update of an existing exchange")
    return GateDecision(
        False, f"a {header.kind} without a bound decision needs an existing exchange"
    )


def _registry_failure(exc: Exception) -> GateDecision:
    """Default deny when the registry cannot answer; a refusal it gave (4xx) is a refusal."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return GateDecision(False, f"consent registry refused: {getattr(exc, 'message', exc)}")
    return GateDecision(
        False, f"consent registry unavailable ({type(exc).__name__})", unavailable=True
    )
