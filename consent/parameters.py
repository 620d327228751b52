"""FHIR ``Parameters`` in and out of ``POST /fhir/Consent/$decide``.

In::

    patient    valueString | valueIdentifier   the patient's pseudonym (required)
    recipient  valueString | valueReference    organisation that would receive the data (required)
    requester  valueString | valueReference    optional; only the caller itself (another → 403)
    purpose    valueCode | valueCoding          v3 ActReason (consent.policy.PURPOSES; required)
    class      valueCode | valueCoding (×n)     FHIR resource types (at least one)
    reason     valueString                      required for ETREAT (break-glass)
    envelope   valueId                          the envelope that will carry the decision
    lookup     valueId                          instead of ``envelope``: the id of the
                                                record-locator lookup the decision is for (the
                                                coordinator re-checks it by that id; issue 23);
                                                not with ``envelope``, ``sender`` or ``pull``;
                                                ``recipient`` must be the caller (else 403: a
                                                lookup brings the data to who looks up)
    candidate  valueString (×n, ≤ 8)             the same patient's pseudonym under the other key
                                                versions the pseudonymisation authority still
                                                holds — the caller's own OPRF evaluations of the
                                                identifier it holds (issue 23); the registry
                                                decides under the one the patient is known by
                                                (``consent.known_by``) and says which (``patient``
                                                out, the token's ``sub``). Each an OPRF
                                                pseudonym (``v<N>.``), one per key version
    pull       valueId                          ETREAT without a reason: the envelope id of the
                                                break-glass pull grant this envelope carries
                                                on (a record query or its answer; see
                                                consent.break_glass.pull_refusal)

Out: ``patient`` (the pseudonym decided under: ``patient`` in, or one of the ``candidate``s),
``decision`` (permit|deny), ``class``×n (permitted), ``refused-class``×n, ``consent``×n
(``Consent/<id>``), ``reason``, ``break-glass``, ``decision-id``, ``expires``, ``data-period``
and ``decision-token`` (the signed JWS, see :mod:`consent.decision_token`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent.model import check_classes, check_org_id, check_pseudonym, check_purpose
from servicekit.outcome import BadRequest
from trust.pseudonym import pseudonym_key_version

__all__ = [
    "DecideInput",
    "RecheckInput",
    "LookupRecheckInput",
    "parse_decide",
    "check_candidates",
    "MAX_CANDIDATES",
    "parse_recheck",
    "decision_parameters",
]

_ALLOWED = {
    "patient",
    "recipient",
    "requester",
    "purpose",
    "class",
    "reason",
    "envelope",
    "sender",
    "pull",
    "lookup",
    "candidate",
}
#: at most this many ``candidate`` pseudonyms (one per older key version still held)
MAX_CANDIDATES = 8
# What a lookup's decision cannot also take, and why (each refusal names its own conflict).
_NOT_WITH_LOOKUP = (
    ("envelope", "a decision is bound to an envelope or to a lookup, not both"),
    ("sender", "a lookup's decision names no sender: the caller is who looks up"),
    (
        "pull",
        "a lookup's decision is not made under a pull grant: a break-glass pull's lookup is "
        "bound by the clinician's own grant (ETREAT with a reason and lookup = the pull id)",
    ),
)
_ENVELOPE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_REASON = 500


@dataclass(frozen=True)
class DecideInput:
    patient: str
    recipient: str
    requester: str | None
    purpose: str
    classes: frozenset[str]
    reason: str | None
    envelope: str | None = None  # the id of the envelope that will carry the decision
    sender: str | None = None  # a $recheck's: the envelope's sender (never from $decide)
    pull: str | None = None  # ETREAT under a break-glass pull grant (its envelope id)
    # what ``envelope`` is the id of: "envelope", or "lookup" (a record-locator lookup's id,
    # given as ``Parameters.lookup``); a lookup's decision is never an envelope's and vice versa
    binds: str = "envelope"
    #: the same patient's pseudonyms under other key versions (the caller's own evaluations);
    #: the registry decides under the one the patient is known by (``consent.known_by``)
    candidates: tuple[str, ...] = ()


def _value(param: dict[str, Any], name: str) -> str:
    for key, val in param.items():
        if not key.startswith("value"):
            continue
        if key in ("valueString", "valueCode", "valueId", "valueUri") and isinstance(val, str):
            return val
        if key == "valueCoding" and isinstance(val, dict) and isinstance(val.get("code"), str):
            return str(val["code"])
        if key == "valueIdentifier" and isinstance(val, dict) and isinstance(val.get("value"), str):
            return str(val["value"])
        if key == "valueReference" and isinstance(val, dict):
            ref = val.get("reference")
            if isinstance(ref, str) and ref.startswith("Organization/"):
                return ref.split("/", 1)[1]
        raise BadRequest(f"parameter {name}: unsupported {key}", expression=[f"Parameters.{name}"])
    raise BadRequest(f"parameter {name} has no value", expression=[f"Parameters.{name}"])


def _collect(body: object, allowed: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """A Parameters resource's values by name; a wrong shape or an unknown name is a 400."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("body must be a FHIR Parameters resource", expression=["resourceType"])
    params = body.get("parameter")
    if not isinstance(params, list) or not params:
        raise BadRequest("Parameters.parameter is required", expression=["Parameters.parameter"])
    values: dict[str, list[str]] = {}
    for i, param in enumerate(params):
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise BadRequest(
                f"Parameters.parameter[{i}] needs a name", expression=[f"Parameters.parameter[{i}]"]
            )
        name = param["name"]
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r}", expression=[f"Parameters.{name}"])
        values.setdefault(name, []).append(_value(param, name))
    return values


def parse_decide(body: object) -> DecideInput:
    values = _collect(body, _ALLOWED)
    for name in (
        "patient", "recipient", "requester", "purpose", "reason", "envelope", "sender", "pull",
        "lookup",
    ):  # fmt: skip
        if len(values.get(name, [])) > 1:
            raise BadRequest(f"parameter {name} given twice", expression=[f"Parameters.{name}"])
    for name in ("patient", "recipient", "purpose"):
        if name not in values:
            raise BadRequest(f"parameter {name} is required", expression=[f"Parameters.{name}"])
    if not values.get("class"):
        raise BadRequest("at least one class is required", expression=["Parameters.class"])
    reason = values.get("reason", [None])[0]
    if reason is not None:
        reason = reason.strip()
        if len(reason) > MAX_REASON:
            raise BadRequest("reason is too long", expression=["Parameters.reason"])
    requester = values.get("requester", [None])[0]
    sender = values.get("sender", [None])[0]
    envelope = values.get("envelope", [None])[0]
    if envelope is not None and not _ENVELOPE_ID.match(envelope):
        raise BadRequest(
            "envelope must be a lowercase UUID (an envelope id)", expression=["Parameters.envelope"]
        )
    pull = values.get("pull", [None])[0]
    if pull is not None and not _ENVELOPE_ID.match(pull):
        raise BadRequest(
            "pull must be a lowercase UUID (the pull grant's envelope id)",
            expression=["Parameters.pull"],
        )
    lookup = values.get("lookup", [None])[0]
    binds = "envelope"
    if lookup is not None:
        if not _ENVELOPE_ID.match(lookup):
            raise BadRequest(
                "lookup must be a lowercase UUID (a lookup id)", expression=["Parameters.lookup"]
            )
        for name, why in _NOT_WITH_LOOKUP:
            if values.get(name):
                raise BadRequest(why, expression=[f"Parameters.{name}"])
        envelope, binds = lookup, "lookup"  # kept by the same id column, marked a lookup's
    elif sender is not None:  # the coordinator's re-check is $recheck, not a decision
        raise BadRequest(
            "sender is not a $decide parameter: an envelope's decision is re-checked with "
            "$recheck (envelope, sender, recipient)",
            expression=["Parameters.sender"],
        )
    elif pull is not None and envelope is None:
        raise BadRequest(
            "a decision under a pull grant is bound to its envelope (Parameters.envelope)",
            expression=["Parameters.envelope"],
        )
    patient = check_pseudonym(values["patient"][0], "Parameters.patient")
    return DecideInput(
        patient=patient,
        recipient=check_org_id(values["recipient"][0], "Parameters.recipient"),
        requester=check_org_id(requester, "Parameters.requester") if requester else None,
        purpose=check_purpose(values["purpose"][0], "Parameters.purpose"),
        classes=check_classes(values["class"], "Parameters.class"),
        reason=reason or None,
        envelope=envelope,
        pull=pull,
        binds=binds,
        candidates=check_candidates(patient, values.get("candidate", []), "Parameters.candidate"),
    )


def check_candidates(patient: str, given: object, field: str) -> tuple[str, ...]:
    """Other pseudonyms of ``patient`` under other key versions: OPRF pseudonyms (``v<N>.``),
    at most :data:`MAX_CANDIDATES`, each of a key version no other (nor ``patient``) has — one
    question per version, what the caller could have asked separately anyway. The registry
    cannot check that they are one person's (issue 23): it never stores them together, and
    decides under one of them only (``consent.known_by``)."""
    if not isinstance(given, list | tuple):
        raise BadRequest(f"{field} must be a list of pseudonyms", expression=[field])
    if len(given) > MAX_CANDIDATES:
        raise BadRequest(f"at most {MAX_CANDIDATES} {field} values", expression=[field])
    found = tuple(check_pseudonym(c, field) for c in given)
    versions = [pseudonym_key_version(p) for p in (patient, *found)]
    if found and None in versions:
        raise BadRequest(
            f"{field} needs pseudonyms of the authority's OPRF (v<N>.<hex>), "
            "the patient's included",
            expression=[field],
        )
    if len(set(versions)) != len(versions):
        raise BadRequest(
            f"one pseudonym per key version: {field} repeats a version", expression=[field]
        )
    return found


@dataclass(frozen=True)
class RecheckInput:
    envelope: str
    sender: str
    recipient: str


@dataclass(frozen=True)
class LookupRecheckInput:
    lookup: str
    sender: str  # the organisation that made the lookup
    patient: str  # the pseudonym it looked up


def parse_recheck(body: object) -> RecheckInput | LookupRecheckInput:
    """``$recheck``: ``envelope`` (valueId), ``sender``, ``recipient`` (the data recipient) —
    what an envelope's clear header says; no patient, purpose or class (the registry has the
    question on file, and the clear header carries none of them). Or, for a record-locator
    lookup: ``lookup`` (valueId), ``sender`` (who looked up) and ``patient`` (the pseudonym it
    looked up — what the lookup request says); still no purpose or class."""
    params = body.get("parameter") if isinstance(body, dict) else None
    if isinstance(params, list) and any(  # else _collect answers the wrong shape with a 400
        isinstance(p, dict) and p.get("name") == "lookup" for p in params
    ):
        return _parse_lookup_recheck(body)
    values = _collect(body, {"envelope", "sender", "recipient"})
    for name in ("envelope", "sender", "recipient"):
        if len(values.get(name, [])) != 1:
            raise BadRequest(
                f"parameter {name} is required once", expression=[f"Parameters.{name}"]
            )
    envelope = values["envelope"][0]
    if not _ENVELOPE_ID.match(envelope):
        raise BadRequest(
            "envelope must be a lowercase UUID (an envelope id)", expression=["Parameters.envelope"]
        )
    return RecheckInput(
        envelope=envelope,
        sender=check_org_id(values["sender"][0], "Parameters.sender"),
        recipient=check_org_id(values["recipient"][0], "Parameters.recipient"),
    )


def _parse_lookup_recheck(body: object) -> LookupRecheckInput:
    values = _collect(body, {"lookup", "sender", "patient"})
    for name in ("lookup", "sender", "patient"):
        if len(values.get(name, [])) != 1:
            raise BadRequest(
                f"parameter {name} is required once", expression=[f"Parameters.{name}"]
            )
    lookup = values["lookup"][0]
    if not _ENVELOPE_ID.match(lookup):
        raise BadRequest(
            "lookup must be a lowercase UUID (a lookup id)", expression=["Parameters.lookup"]
        )
    return LookupRecheckInput(
        lookup=lookup,
        sender=check_org_id(values["sender"][0], "Parameters.sender"),
        patient=check_pseudonym(values["patient"][0], "Parameters.patient"),
    )


def decision_parameters(
    *,
    permit: bool,
    classes: frozenset[str],
    refused: frozenset[str],
    consent_ids: tuple[str, ...],
    reason: str,
    break_glass: bool,
    decision_id: str,
    expires_at: int,
    token: str,
    data_period: dict[str, str] | None,
    patient: str | None = None,
) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if patient is not None:
        params.append({"name": "patient", "valueString": patient})
    params.append({"name": "decision", "valueCode": "permit" if permit else "deny"})
    params += [{"name": "class", "valueCode": c} for c in sorted(classes)]
    params += [{"name": "refused-class", "valueCode": c} for c in sorted(refused)]
    params += [
        {"name": "consent", "valueReference": {"reference": f"Consent/{i}"}} for i in consent_ids
    ]
    params += [
        {"name": "reason", "valueString": reason},
        {"name": "break-glass", "valueBoolean": break_glass},
        {"name": "decision-id", "valueString": decision_id},
        {
            "name": "expires",
            "valueInstant": datetime.fromtimestamp(expires_at, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        },
    ]
    if data_period:
        params.append({"name": "data-period", "valuePeriod": data_period})
    params.append({"name": "decision-token", "valueString": token})
    return {"resourceType": "Parameters", "parameter": params}
