"""The coordinator's consent check, asked before routing and again at delivery.

The rule (one place): a data-carrying envelope passes only if the patient's consent permits
*every* declared class to the party that will receive the data, for the declared purpose. The
coordinator asks under its own name (the registry records the authenticated caller as the
requester; it cannot be told another), so the patient's list shows the coordinator's check.
Envelopes that carry no clinical classes (a Task status update) pass only along an exchange that
already exists: an earlier referral or consultation for the same patient in the other direction.

The coordinator does not know who the patient is: the header carries a routing pseudonym of the
sender–recipient pair (``trust.pseudonym.routing_pseudonym``) that the registry cannot resolve
either. The sender asked the registry for a decision bound to the envelope id before sealing;
the gate has the registry decide that stored question again *by envelope id*
(``ConsentClient.recheck``) — before routing and at delivery, so a revocation in between
stops the envelope — and learns only permit/deny and the permitted classes. Only an envelope
for which no decision was asked (a 404: sealed by hand, or by a sender from before routing
pseudonyms) is asked about by the pseudonym in its header, as before.

Break-glass (purpose ``ETREAT``): the coordinator has no clinician and no reason to state; the
registry re-admits only the break-glass it granted for this envelope (same patient, sender and
recipient, every class, within the window; ``consent.break_glass``) — through the recheck by
envelope id, or, for an envelope without a stored question, by the header's pseudonym with the
envelope id and sender. Without such a grant it is a deny; a re-admission's reason (clinician,
stated reason, the grant's decision id) is what the routing audit records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.envelope_rules import data_recipient
from trust.envelopes import EnvelopeHeader

__all__ = ["GateDecision", "ConsentOracle", "ConsentGate"]


@dataclass(frozen=True)
class GateDecision:
    permit: bool
    reason: str
    consent_ids: tuple[str, ...] = ()
    unavailable: bool = False  # refused because the registry could not be asked
    # A permit the registry's $recheck marked reusable: it holds while the registry's consent
    # epoch is still this one (no consent written since).
    epoch: str | None = None

    def still_holds(self, epoch_now: str | None) -> bool:
        """May this routing decision stand at delivery? Only a permit that the registry marked
        reusable, when no consent has been written since (same epoch). Anything else — a
        consent written, no epoch to compare — is decided again."""
        return self.permit and self.epoch is not None and epoch_now == self.epoch


class ConsentOracle(Protocol):
    """What the gate needs of the consent registry (consent.client.ConsentClient fits)."""

    def recheck(
        self, envelope_id: str, sender: str, recipient: str, purpose: str, classes: Any
    ) -> Any: ...

    def decide(
        self,
        patient_pseudonym: str,
        recipient: str,
        purpose: str,
        classes: Any,
        *,
        envelope_id: str | None = None,
        sender: str | None = None,
    ) -> Any: ...


class ConsentGate:
    def __init__(self, oracle: ConsentOracle | None) -> None:
        self.oracle = oracle

    def check(self, header: EnvelopeHeader, *, prior_exchange: Callable[[], bool]) -> GateDecision:
        """``prior_exchange`` is asked only for envelopes without data classes."""
        if not header.classes:
            if header.kind == "task-update" and prior_exchange():
                return GateDecision(True, "status update of an existing exchange")
            return GateDecision(
                False, f"a {header.kind} without data classes needs an existing exchange"
            )
        if self.oracle is None:
            return GateDecision(False, "no consent registry is configured (default deny)")
        if header.patient_pseudonym is None:  # check_header refuses these before the gate
            return GateDecision(False, "no patient pseudonym to ask consent for")
        receiver = data_recipient(header)
        try:
            decision = self._ask(self.oracle, header, header.patient_pseudonym, receiver)
        except Exception as exc:  # registry down or refusing us: default deny
            return _registry_failure(exc)
        permitted = set(getattr(decision, "classes", ()) or ())
        consent_ids = tuple(getattr(decision, "consent_ids", ()) or ())
        if not getattr(decision, "permit", False):
            reason = getattr(decision, "reason", "") or "no consent"
            return GateDecision(False, f"consent refused: {reason}", consent_ids)
        if header.kind == "record-query":
            # The holder filters to what is permitted; the query itself may ask for more.
            return GateDecision(True, "consent permits disclosure to the requester", consent_ids)
        refused = sorted(set(header.classes) - permitted)
        if refused:
            return GateDecision(
                False, f"consent does not cover declared classes {refused}", consent_ids
            )
        if getattr(decision, "break_glass", False):
            reason = getattr(decision, "reason", "") or "break-glass"
            return GateDecision(True, f"break-glass re-admitted: {reason}", consent_ids)
        reusable = header.purpose != "ETREAT" and header.kind != "record-query"
        return GateDecision(
            True,
            "consent permits all declared classes",
            consent_ids,
            epoch=getattr(decision, "epoch", None) if reusable else None,
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

    @staticmethod
    def _ask(oracle: ConsentOracle, header: EnvelopeHeader, pseudonym: str, receiver: str) -> Any:
        """By envelope id; by the header's pseudonym only when no decision was bound to it."""
        classes = list(header.classes)
        try:
            return oracle.recheck(
                header.envelope_id, header.sender, receiver, header.purpose, classes
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
        # A break-glass envelope is re-admitted by the registry on the grant bound to its id.
        bound = (
            {"envelope_id": header.envelope_id, "sender": header.sender}
            if header.purpose == "ETREAT"
            else {}
        )
        return oracle.decide(pseudonym, receiver, header.purpose, classes, **bound)

    def check_lookup(
        self,
        *,
        patient_pseudonym: str,
        caller: str,
        purpose: str,
        classes: list[str],
        break_glass_envelope: str = "",
    ) -> GateDecision:
        """A record-locator lookup discloses where the patient is treated, so it passes only if
        the patient's consent permits at least one of the classes the caller will query the
        holders for, to the caller, for the stated purpose (the record-query rule). A
        break-glass pull (``ETREAT``) passes only if the registry re-admits the caller's pull
        grant bound to ``break_glass_envelope`` (same patient, caller, classes, within the
        window; ``consent.break_glass``)."""
        if self.oracle is None:
            return GateDecision(False, "no consent registry is configured (default deny)")
        bound: dict[str, str] = {}
        if purpose == "ETREAT":
            if not break_glass_envelope:
                return GateDecision(
                    False,
                    "a break-glass (ETREAT) lookup names the break-glass grant it was given "
                    "(break_glass_envelope)",
                )
            bound = {"envelope_id": break_glass_envelope, "sender": caller}
        try:
            decision = self.oracle.decide(patient_pseudonym, caller, purpose, classes, **bound)
        except Exception as exc:
            return _registry_failure(exc)
        consent_ids = tuple(getattr(decision, "consent_ids", ()) or ())
        if not getattr(decision, "permit", False):
            reason = getattr(decision, "reason", "") or "no consent"
            return GateDecision(False, f"consent refused: {reason}", consent_ids)
        if getattr(decision, "break_glass", False):
            reason = getattr(decision, "reason", "") or "break-glass"
            return GateDecision(True, f"break-glass re-admitted: {reason}", consent_ids)
        return GateDecision(True, "consent permits disclosure to the caller", consent_ids)


def _registry_failure(exc: Exception) -> GateDecision:
    """Default deny when the registry cannot answer; a refusal it gave (4xx) is a refusal."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return GateDecision(False, f"consent registry refused: {getattr(exc, 'message', exc)}")
    return GateDecision(
        False, f"consent registry unavailable ({type(exc).__name__})", unavailable=True
    )
