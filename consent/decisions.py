"""Deciding a request at the registry: consents from the store → the pure engine → break-glass
rule → signed decision → audit ledger. Nothing is cached, so a revocation applies to the very
next decision.

An envelope-bound decision (``envelope`` given) also keeps the question it answered, by envelope
id (``consent_envelope_questions``): patient, requester, recipient, purpose, the classes asked
and the classes the decision permitted. The coordinator sees no purpose and no classes (they are
inside the sealed payload, issue 23) and routes by a routing pseudonym it cannot relate to the
patient, so it asks again by envelope id, sender and data recipient alone
(:meth:`DecisionService.recheck`, ``POST /fhir/Consent/$recheck``): the registry decides the
stored question anew against the consents as they are now — every class the decision permitted
must still be permitted, for the stored purpose — and answers permit/deny — no patient, no
purpose, no class, no consent id, nothing the coordinator could link.

A record-locator lookup's decision is bound the same way to a lookup id (``$decide`` with
``lookup``; kept in the same table, ``bound`` = ``lookup``): the coordinator has it decided again
by lookup id, the caller and the pseudonym looked up (:meth:`DecisionService.recheck_lookup`,
``$recheck`` with ``lookup``) and hears no purpose or class of a lookup either. A lookup brings
data to who looks up: its recipient must be the caller (403 at ``$decide``; a stored one that is
not is a deny at the recheck), and a break-glass lookup is re-admitted only by a pull grant. A
lookup's decision never serves an envelope's ``$recheck`` nor an envelope's a lookup's, and an id
bound one way cannot be bound the other (409).

A bound id lives for a stated time after it was last asked (:func:`binding_lifetime`, the one
rule): a lookup's binding as long as the decision bound to it (the decision token's ttl,
``consent.settings.decision_ttl``) — a node looks up at once after ``$decide``
(``node.exchange.service.pull_history``) — and an envelope's as long as an envelope carrying its
token can still be delivered. A re-check of an expired binding is a deny that says so, and
expired rows are purged when a new question is bound (as ``trust.jti_store`` sweeps).

After a key rotation of the pseudonymisation authority (issue 23) a question may offer, besides
the patient's current pseudonym, ``candidates``: the same patient's pseudonyms under older key
versions, the caller's own OPRF evaluations. It is decided under exactly one of them, the one the
patient is known by (``consent.known_by``), and everything after — the signed decision's ``sub``,
the stored question, the audit — names that one only; no link between them is kept.

Who asked is the authenticated caller — the organisation whose signed assertion got the token —
and nothing else: a ``requester`` parameter naming another organisation is refused (403), so the
patient's disclosure list cannot be made to show an access by someone who did not ask.

Break-glass: purpose ``ETREAT`` must carry a stated reason (else 400) and may only be asked for
by an organisation token acting for a named clinician (``act.role`` doctor or nurse and an
``act.sub`` user id, both inside the organisation's signed assertion; else 403). If the
patient's consents already permit the request it is granted as such; otherwise the requested
classes are granted because of the emergency. Either way the entry is a ``break_glass``
AuditEvent naming the organisation and its user, with the organisation's signed assertion as
evidence, and it appears in the patient's disclosure list with the break-glass flag. The entry
names the envelope the decision is bound to (``Parameters.envelope``).

A break-glass pull's record queries and answers (``ETREAT`` with ``pull`` and no reason) are
granted only under the pull grant (``consent.break_glass.pull_refusal``), each recorded as a
break-glass entry for its own envelope naming the pull's clinician and reason and the pull grant
it carries on (detail ``pull``). Such a carried entry is never a grant of its own: no pull carries
on from it, and it is re-admitted only for its own envelope's stored question (``$recheck``) while
the clinician's pull grant is within the window (``consent.break_glass.carried_refusal``).

The coordinator's re-check of such an envelope (``$recheck`` by envelope id, sender and
recipient: it has no reason and no clinician to name) is *re-admitted* only if that grant is in
this ledger for the same envelope, patient, sender and recipient and covers every class asked,
granted within ``consent.break_glass.READMIT_WINDOW``; otherwise it is a deny. A re-admission is
audited as a routing decision whose reason names the clinician and the stated reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from consent.auth import CLINICIAN_ROLES, Principal
from consent.break_glass import (
    READMIT_WINDOW,
    Grant,
    find_grant,
    grants_in,
    pull_refusal,
    readmission_refusal,
)
from consent.decision_token import request_hash, sign_decision
from consent.known_by import known_by
from consent.parameters import DecideInput
from consent.policy import Decision, DecisionRequest, decide, next_change
from consent.schema import envelope_questions
from consent.store import ConsentStore
from servicekit.outcome import BadRequest, Conflict, Forbidden, NotFound
from trust import audit_events
from trust.audit_ledger import AuditLedger
from trust.envelopes import MAX_CLOCK_SKEW, MAX_LIFETIME
from trust.tokens import SigningKey

__all__ = ["DecisionService", "IssuedDecision", "DECISION_SYSTEM", "binding_lifetime"]

DECISION_SYSTEM = "urn:ipjms:consent-decision"
ENVELOPE_SYSTEM = "urn:ipjms:envelope"
LOOKUP_SYSTEM = "urn:ipjms:lookup"


#: how often, at most, a new binding also purges the expired ones (registry clock)
PURGE_EVERY = timedelta(minutes=1)


def binding_lifetime(bound: str, decision_ttl: int) -> timedelta:
    """How long after it was last asked (``asked_at``) an id's bound question is re-checked
    and kept — the one rule for the re-checks and the purge.

    * ``lookup``: the lifetime of the decision bound to it, ``decision_ttl`` (the decision
      token's ``exp`` − ``iat``, ``consent.settings.decision_ttl``, 300 s by default). The node
      binds a fresh lookup id and looks up at once (``node.exchange.service.pull_history``, one
      locator RPC under the exchange client's 15 s timeout); a lookup asked after its decision
      expired is refused rather than opened by an old decision.
    * ``envelope``: as long as an envelope carrying the decision can still be delivered: the
      receiver takes the token if it was valid when the envelope was made (± ``MAX_CLOCK_SKEW``,
      ``node.exchange.inbound``), an envelope lives at most ``trust.envelopes.MAX_LIFETIME``,
      and the coordinator's clock may differ from ours by ``MAX_CLOCK_SKEW``."""
    decision = timedelta(seconds=decision_ttl)
    if bound == "lookup":
        return decision
    return decision + MAX_CLOCK_SKEW + MAX_LIFETIME + MAX_CLOCK_SKEW


def _as_utc(at: datetime) -> datetime:
    """``asked_at`` as stored: SQLite hands back a naive datetime (written in UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class IssuedDecision:
    decision: Decision
    decision_id: str
    token: str
    expires_at: int
    patient: str = ""  # the pseudonym decided under (one of the candidates, when offered)


def _period_json(decision: Decision) -> dict[str, str] | None:
    p = decision.data_period
    if p is None:
        return None
    out = {}
    if p.start is not None:
        out["start"] = p.start.isoformat().replace("+00:00", "Z")
    if p.end is not None:
        out["end"] = p.end.isoformat().replace("+00:00", "Z")
    return out


@dataclass(frozen=True)
class Rechecked:
    """A recheck's decision; ``reusable``: decided by the consents alone (not a break-glass
    re-admission, not a refused header) and none of the patient's consents has a period that
    will start or end — so it holds exactly as long as no consent is written (the consent epoch
    stays). The boundary itself is never handed out: when it would tell the coordinator when a
    patient's consent runs out, the answer is simply not reusable."""

    decision: Decision
    reusable: bool = False


class DecisionService:
    def __init__(
        self,
        store: ConsentStore,
        ledger: AuditLedger,
        key: SigningKey,
        *,
        issuer: str,
        observer: str,
        ttl: int = 300,
        x5c: Sequence[str] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.ledger, self.key = store, ledger, key
        self.clock = clock  # the registry's time: decisions, the ledger, the break-glass window
        self.x5c = tuple(x5c)
        self.observer = observer
        self.issuer, self.ttl = issuer, ttl
        self._purged_at: datetime | None = None

    def decide(self, inp: DecideInput, caller: Principal) -> IssuedDecision:
        if caller.org_id is None:
            raise Forbidden("only an organisation may ask for a decision")
        requester = caller.org_id
        if inp.requester is not None and inp.requester != requester:
            raise Forbidden(
                f"requester must be the authenticated caller ({requester}); "
                "another organisation cannot be named"
            )
        if inp.binds == "lookup" and inp.recipient != requester:
            # A lookup is for the caller's own treatment (the data would come to it): consent
            # to another organisation must not open this caller's lookup.
            raise Forbidden(
                f"a lookup's recipient must be the authenticated caller ({requester}); "
                "a lookup cannot be bound for another organisation"
            )
        if inp.candidates:  # the patient's pseudonyms under other key versions (issue 23):
            # decided under the one the patient is known by, and only that one (nothing stored)
            inp = replace(
                inp, patient=known_by(self.store.engine, inp.patient, inp.candidates),
                candidates=(),
            )  # fmt: skip
        carried: Grant | None = None  # the break-glass pull grant this decision carries on
        if inp.purpose == "ETREAT" and not inp.reason and inp.pull and inp.envelope:
            # A record query or answer of a break-glass pull (no clinician at a holder): only
            # under the pull grant this registry made, see consent.break_glass.pull_refusal.
            decision, carried = self._under_pull(inp)
            self._remember(inp, requester, decision)
        else:
            if inp.purpose == "ETREAT":
                if not inp.reason:
                    raise BadRequest(
                        "break-glass (ETREAT) needs a stated reason",
                        expression=["Parameters.reason"],
                    )
                if caller.acting_role not in CLINICIAN_ROLES or not caller.acting_user:
                    raise Forbidden(
                        "break-glass (ETREAT) may only be requested for a named clinician "
                        "(act.role doctor or nurse and act.sub, in the signed assertion)"
                    )
            request = DecisionRequest(
                patient=inp.patient,
                requester=requester,
                recipient=inp.recipient,
                purpose=inp.purpose,
                classes=inp.classes,
                at=self.clock(),
            )
            records = [s.record for s in self.store.for_patient(inp.patient)]
            decision = decide(records, request)
            if inp.purpose == "ETREAT":
                decision = Decision(
                    permit=True,
                    classes=inp.classes,
                    consent_ids=decision.consent_ids if decision.permit else (),
                    reason=f"break-glass by {caller.acting_role}: {inp.reason}"
                    + ("" if decision.permit else " (no consent permitted this request)"),
                    refused_classes=frozenset(),
                    data_period=None,
                    break_glass=True,
                )
            if inp.envelope is not None:  # the sender's own question, kept for $recheck
                self._remember(inp, requester, decision)
        decision_id = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "jti": decision_id,
            "sub": inp.patient,
            "requester": requester,
            "recipient": inp.recipient,
            "purpose": inp.purpose,
            "permit": decision.permit,
            "classes": sorted(decision.classes),
            "refused": sorted(decision.refused_classes),
            "consents": list(decision.consent_ids),
            "reason": decision.reason,
            "break_glass": decision.break_glass,
            "req": request_hash(inp.patient, requester, inp.recipient, inp.purpose, inp.classes),
            "caller": caller.org_id,
        }
        period = _period_json(decision)
        if period is not None:
            claims["data_period"] = period
        if inp.envelope is not None and inp.binds == "lookup":
            claims["lookup"] = inp.envelope  # the record-locator lookup it is for (no "env")
        elif inp.envelope is not None:
            claims["env"] = inp.envelope  # the envelope that will carry this decision
        token, expires_at = sign_decision(self.key, self.issuer, claims, self.ttl, x5c=self.x5c)
        self._audit(inp, caller, requester, decision, decision_id, carried)
        return IssuedDecision(decision, decision_id, token, expires_at, inp.patient)

    def _under_pull(self, inp: DecideInput) -> tuple[Decision, Grant | None]:
        """ETREAT under a break-glass pull grant: granted (a break-glass entry of its own for
        this envelope, naming the pull's clinician and reason) or denied, with the reason."""
        assert inp.pull is not None
        grant, _recent = self._recent_grant(inp, inp.pull)
        refusal = pull_refusal(
            grant, pull=inp.pull, patient=inp.patient, recipient=inp.recipient,
            classes=inp.classes,
        )  # fmt: skip
        return _break_glass_outcome(
            inp, grant, refusal, "break-glass pull", "no break-glass pull grant"
        )

    def _readmission(
        self, inp: DecideInput, *, own_question: bool
    ) -> tuple[Decision, Grant | None]:
        """An ETREAT re-check: re-admit the break-glass this registry granted for the envelope
        (same patient, sender and recipient, every class covered, within the window), or deny.
        ``own_question``: a $recheck of the envelope's stored question — the only re-check that
        re-admits an entry carried from a pull grant (never a lookup naming it)."""
        assert inp.envelope is not None
        grant, recent = self._recent_grant(inp, inp.envelope)
        refusal = readmission_refusal(
            grant,
            envelope_id=inp.envelope,
            patient=inp.patient,
            sender=inp.sender,
            recipient=inp.recipient,
            classes=inp.classes,
            recent=recent,
            own_question=own_question,
        )
        return _break_glass_outcome(inp, grant, refusal, "break-glass", "no break-glass grant")

    def _recent_grant(self, inp: DecideInput, envelope_id: str) -> tuple[Grant | None, list[Grant]]:
        """The break-glass grant this registry recorded for ``envelope_id`` for the patient
        within the re-admission window, if any, and all the patient's grants in that window
        (where the pull grant a carried entry stands on must be)."""
        since = self.clock() - READMIT_WINDOW
        entries = self.ledger.entries(patient_pseudonym=inp.patient, since=since)
        recent = grants_in(((e.event, inp.patient) for e in entries), DECISION_SYSTEM)
        return find_grant(recent, envelope_id), recent

    def _remember(self, inp: DecideInput, requester: str, decision: Decision) -> None:
        """Keep the question an envelope-bound decision answered and the classes it permitted.

        An envelope id binds one question: asking again for a bound id is only a retry of it —
        the same requester, patient, recipient and purpose — else 409 and nothing changes
        (another organisation cannot take over the id; the sender cannot swap the question a
        token was already minted for). A retry keeps the union of the classes asked and of the
        classes permitted, so a ``$recheck`` decides every class any token for the envelope
        permitted (a narrower retry cannot shrink what the envelope may hold)."""
        permitted = decision.classes if decision.permit else frozenset()
        kind = "lookup id" if inp.binds == "lookup" else "envelope id"
        self.purge_expired_bindings()
        with self.store.engine.begin() as conn:
            old = conn.execute(
                select(envelope_questions)
                .where(envelope_questions.c.envelope_id == inp.envelope)
                .with_for_update()  # PostgreSQL: concurrent retries merge one after the other
            ).first()
            if old is None:
                try:
                    conn.execute(
                        insert(envelope_questions).values(
                            envelope_id=inp.envelope,
                            patient=inp.patient,
                            requester=requester,
                            recipient=inp.recipient,
                            purpose=inp.purpose,
                            classes=json.dumps(sorted(inp.classes)),
                            permitted=json.dumps(sorted(permitted)),
                            break_glass=decision.break_glass,
                            asked_at=self.clock(),
                            bound=inp.binds,
                        )
                    )
                except IntegrityError:  # bound by a concurrent request in the meantime
                    raise Conflict(
                        f"this {kind} was bound by another request at the same time; ask again"
                    ) from None
                return
            q = old._mapping
            if (q["bound"] or "envelope") != inp.binds:  # a lookup's id is no envelope's
                raise Conflict(
                    f"this id is bound to {_kind(q['bound'])}'s decision; it cannot be bound "
                    f"to {_kind(inp.binds)}'s"
                )
            if q["requester"] != requester:
                raise Conflict(f"this {kind} is bound to another organisation's decision")
            differs = [
                name
                for name, value in (
                    ("patient", inp.patient),
                    ("recipient", inp.recipient),
                    ("purpose", inp.purpose),
                )
                if q[name] != value
            ]
            if differs:
                raise Conflict(
                    f"this {kind} is bound to a decision for another {differs[0]}; "
                    f"asking again for a bound {kind} may only repeat its question — "
                    f"a new question needs a new {kind}"
                )
            conn.execute(
                update(envelope_questions)
                .where(envelope_questions.c.envelope_id == inp.envelope)
                .values(
                    classes=json.dumps(sorted(set(json.loads(q["classes"])) | inp.classes)),
                    permitted=json.dumps(sorted(set(json.loads(q["permitted"])) | permitted)),
                    break_glass=bool(q["break_glass"]) or decision.break_glass,
                    asked_at=self.clock(),
                )
            )

    def purge_expired_bindings(self, *, force: bool = False) -> int:
        """Delete the bound questions past their lifetime (:func:`binding_lifetime`); at most
        once per ``PURGE_EVERY`` unless ``force``. Returns how many rows went. Its own short
        transaction, so concurrent ``$decide`` calls never wait on each other's purge."""
        now = self.clock()
        if not force and self._purged_at is not None and now - self._purged_at < PURGE_EVERY:
            return 0
        self._purged_at = now
        q = envelope_questions.c
        with self.store.engine.begin() as conn:
            gone = conn.execute(
                delete(envelope_questions).where(
                    or_(
                        (q.bound == "lookup")
                        & (q.asked_at < now - binding_lifetime("lookup", self.ttl)),
                        (q.bound != "lookup")
                        & (q.asked_at < now - binding_lifetime("envelope", self.ttl)),
                    )
                )
            )
        return int(gone.rowcount or 0)

    def _expired(self, q: RowMapping) -> str | None:
        """Why the question bound to ``q``'s id may no longer be re-checked, or None."""
        bound = "lookup" if q["bound"] == "lookup" else "envelope"
        life = binding_lifetime(bound, self.ttl)
        if self.clock() - _as_utc(q["asked_at"]) <= life:
            return None
        return (
            f"the decision bound to this {bound} expired ({_kind(bound)}'s binding lives "
            f"{int(life.total_seconds())} s after it was asked); a new {bound} needs a new "
            "decision"
        )

    def recheck(self, envelope_id: str, sender: str, recipient: str, caller: str) -> Rechecked:
        """Decide again the question an envelope-bound decision answered, as consents are now.

        The caller states only what an envelope's clear header says: its id, sender and data
        recipient; a mismatch with the stored question is a deny. The stored purpose is decided
        for every class the decision permitted when asked — all must still be permitted (fail
        closed: consent narrowed by any of them denies), and a question that was denied stays
        denied. The answer is audited in the patient's ledger under the caller's name. A
        break-glass question is re-admitted only under the grant made for it (within the
        window, ``consent.break_glass``)."""
        q = self._bound_question(
            envelope_id,
            "no decision was asked for this envelope, or its binding expired and was purged",
        )
        purpose = str(q["purpose"])
        permitted = frozenset(json.loads(q["permitted"]))
        reusable = False
        differs = [
            name
            for name, same in (
                ("sender", q["requester"] == sender),
                ("recipient", q["recipient"] == recipient),
            )
            if not same
        ]
        expired = self._expired(q)
        if q["bound"] == "lookup":  # a lookup's decision never lets an envelope through
            differs = ["question"]
            decision = _denied("the decision bound to this id is a lookup's, not an envelope's")
        elif expired:
            decision = _denied(expired)
        elif differs:
            decision = _denied(f"the decision for this envelope was asked for another {differs[0]}")
        elif not permitted:
            decision = _denied("the decision for this envelope permitted nothing")
        elif purpose == "ETREAT":  # only the grant this registry made for the envelope
            decision, _grant = self._readmission(
                DecideInput(
                    patient=q["patient"],
                    recipient=recipient,
                    requester=None,
                    purpose=purpose,
                    classes=permitted,
                    reason=None,
                    envelope=envelope_id,
                    sender=sender,
                ),
                own_question=True,
            )
        else:
            request = DecisionRequest(
                patient=q["patient"],
                requester=q["requester"],
                recipient=recipient,
                purpose=purpose,
                classes=permitted,
                at=self.clock(),
            )
            records = [s.record for s in self.store.for_patient(q["patient"])]
            decision = decide(records, request)
            narrowed = permitted - decision.classes if decision.permit else permitted
            if narrowed:  # fail closed: every class the envelope may hold must still be permitted
                decision = replace(
                    _denied(f"consent no longer permits {sorted(narrowed)}"),
                    consent_ids=decision.consent_ids,
                )
            reusable = decision.permit and next_change(records, request.at) is None
        self._audit_recheck(q, recipient, decision, ENVELOPE_SYSTEM, envelope_id, caller)
        # The answer leaves for the coordinator: the policy's reason names consent ids (the
        # same for every envelope of the patient), so it gets a reason that names nothing.
        if decision.break_glass:  # names the clinician and the grant, not the patient
            neutral = decision.reason
        elif decision.permit:
            neutral = "consent permits the envelope"
        elif differs or expired or not permitted:
            neutral = decision.reason
        else:  # the class names stay here: the coordinator is not told which data it routes
            neutral = "consent no longer permits what the envelope's decision permitted"
        return Rechecked(replace(decision, consent_ids=(), reason=neutral), reusable)

    def recheck_lookup(self, lookup_id: str, sender: str, patient: str, caller: str) -> Decision:
        """Decide again, as consents are now, the question a lookup-bound decision answered
        (``$decide`` with ``lookup``) — what the coordinator asks before it answers a
        record-locator lookup: the lookup id, who looked up and the pseudonym looked up; never a
        purpose or a class (issue 23).

        The decision bound to the id must be a lookup's (an envelope's is a deny), asked by
        ``sender`` for ``patient`` with ``sender`` as its recipient (another caller, patient or
        recipient is a deny). It permits when the
        stored purpose is still permitted, to the caller, for at least one class the decision
        permitted — the lookup rule: a lookup discloses only where the patient is treated, and
        every record query after it is decided on its own. A break-glass (``ETREAT``) lookup is
        re-admitted only under the clinician's pull grant made with this id (its data to
        ``sender``; a grant to another organisation never), within the window
        (``consent.break_glass``). Audited in the patient's ledger under the caller's name; the
        answer names no consent, purpose or class."""
        q = self._bound_question(
            lookup_id,
            "no decision was asked for this lookup, or its binding expired and was purged",
        )
        purpose = str(q["purpose"])
        permitted = frozenset(json.loads(q["permitted"]))
        mismatch = [
            name
            for name, same in (
                ("question", q["bound"] == "lookup"),
                ("caller", q["requester"] == sender),
                ("patient", q["patient"] == patient),
                # bound before the recipient was checked at $decide: a lookup for another
                # organisation's data never opens this caller's lookup
                ("recipient", q["recipient"] == sender),
            )
            if not same
        ]
        expired = self._expired(q)
        if mismatch and mismatch[0] == "question":
            decision = _denied("the decision bound to this id is an envelope's, not a lookup's")
        elif expired:
            decision = _denied(expired)
        elif mismatch:
            decision = _denied(f"the decision for this lookup was asked for another {mismatch[0]}")
        elif not permitted:
            decision = _denied("the decision for this lookup permitted nothing")
        elif purpose == "ETREAT":  # only the clinician's pull grant made with this id
            decision, _grant = self._readmission(
                DecideInput(
                    patient=q["patient"],
                    recipient=sender,  # only a pull grant (data to who looks up) re-admits it
                    requester=None,
                    purpose=purpose,
                    classes=permitted,
                    reason=None,
                    envelope=lookup_id,
                    sender=sender,
                ),
                own_question=False,
            )
        else:
            request = DecisionRequest(
                patient=q["patient"],
                requester=q["requester"],
                recipient=q["recipient"],
                purpose=purpose,
                classes=permitted,
                at=self.clock(),
            )
            decision = decide([s.record for s in self.store.for_patient(q["patient"])], request)
        self._audit_recheck(q, q["recipient"], decision, LOOKUP_SYSTEM, lookup_id, caller)
        if (
            decision.break_glass or mismatch or expired or not permitted
        ):  # names no consent or class
            neutral = decision.reason
        elif decision.permit:
            neutral = "consent permits the lookup"
        else:  # the policy's reason names the purpose and consent ids: they stay here
            neutral = "consent does not permit what the lookup's decision permitted"
        return replace(decision, consent_ids=(), reason=neutral)

    def _bound_question(self, bound_id: str, missing: str) -> RowMapping:
        """The question stored for an envelope or lookup id (either kind); ``NotFound`` with
        ``missing`` when none was asked."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(envelope_questions).where(envelope_questions.c.envelope_id == bound_id)
            ).first()
        if row is None:
            raise NotFound(missing)
        return row._mapping

    def _audit_recheck(
        self,
        q: RowMapping,
        recipient: str,
        decision: Decision,
        system: str,
        bound_id: str,
        caller: str,
    ) -> None:
        """Audit a re-check of the stored question ``q`` in the patient's ledger, naming the
        envelope or lookup id (``system``) and the caller."""
        event = audit_events.routing_decision(
            permit=decision.permit,
            sender=q["requester"],
            recipient=recipient,
            purpose=str(q["purpose"]),
            classes=sorted(set(json.loads(q["permitted"]))),
            patient_pseudonym=q["patient"],
            observer=self.observer,
            reason=decision.reason,
            consent_refs=[f"Consent/{i}" for i in decision.consent_ids],
        )
        event["entity"].append(
            {
                "what": {"identifier": {"system": system, "value": bound_id}},
                "detail": [{"type": "caller", "valueString": caller}],
            }
        )
        self.ledger.append(event, patient_pseudonym=q["patient"], now=self.clock())

    def _audit(
        self,
        inp: DecideInput,
        caller: Principal,
        requester: str,
        decision: Decision,
        decision_id: str,
        carried: Grant | None = None,
    ) -> None:
        if decision.break_glass:
            event = audit_events.break_glass(
                user=carried.user if carried else caller.acting_user or "unknown",
                org=requester,
                recipient=inp.recipient,
                patient_pseudonym=inp.patient,
                reason=carried.reason if carried else inp.reason or "",
                classes=sorted(decision.classes),
                observer=self.observer,
                envelope_id=inp.envelope,  # what a re-check of that envelope re-admits
                user_org=carried.requester if carried else None,
            )
        else:
            event = audit_events.routing_decision(
                permit=decision.permit,
                sender=requester,
                recipient=inp.recipient,
                purpose=inp.purpose,
                classes=sorted(decision.classes if decision.permit else inp.classes),
                patient_pseudonym=inp.patient,
                observer=self.observer,
                reason=decision.reason,
                consent_refs=[f"Consent/{i}" for i in decision.consent_ids],
            )
        event["entity"].append(
            {
                "what": {"identifier": {"system": DECISION_SYSTEM, "value": decision_id}},
                "detail": [
                    {"type": "caller", "valueString": caller.org_id or ""},
                    {
                        "type": "acting-role",
                        "valueString": (carried.role if carried else caller.acting_role) or "-",
                    },
                ],
            }
        )
        if carried is not None:  # which pull grant this one carries on
            event["entity"][-1]["detail"].append(
                {"type": "pull", "valueString": carried.decision_id}
            )
        if decision.break_glass and caller.acting_evidence:
            # The organisation's signed statement of its user's role: evidence it cannot deny.
            event["entity"][-1]["detail"].append(
                {"type": "acting-assertion", "valueString": caller.acting_evidence}
            )
        self.ledger.append(event, patient_pseudonym=inp.patient, now=self.clock())


def _kind(bound: str) -> str:
    return "a lookup" if bound == "lookup" else "an envelope"


def _denied(reason: str) -> Decision:
    return Decision(permit=False, classes=frozenset(), consent_ids=(), reason=reason)


def _break_glass_outcome(
    inp: DecideInput, grant: Grant | None, refusal: str | None, what: str, none_found: str
) -> tuple[Decision, Grant | None]:
    """Granted under ``grant`` (every class asked for, marked break-glass, naming the clinician,
    the requester, the grant and its reason), or denied with the refusal's reason."""
    if refusal is not None or grant is None:
        denied = Decision(
            permit=False,
            classes=frozenset(),
            consent_ids=(),
            reason=refusal or none_found,
            refused_classes=inp.classes,
        )
        return denied, None
    granted = Decision(
        permit=True,
        classes=inp.classes,
        consent_ids=(),
        reason=(
            f"{what} by {grant.role or 'clinician'} {grant.user} of {grant.requester} "
            f"(decision {grant.decision_id}): {grant.reason}"
        ),
        break_glass=True,
    )
    return granted, grant
