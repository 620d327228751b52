"""``ConsentClient``: how nodes, the coordinator and the authority talk to the consent registry.

Authenticates with a cert-backed organisation assertion (:mod:`trust.backend_auth`), caches the
access token until shortly before it expires (one per acting role), and verifies signed
decisions offline with the registry's JWKS (fetched once, refreshed on an unknown ``kid``)::

    client = ConsentClient("http://127.0.0.1:8300", load_org(org_dir))
    d = client.decide(pseudonym, "clinic-b", "TREAT", ["Condition", "Observation"])
    if d.permit: ...            # d.classes, d.consent_ids, d.reason, d.token
    client.verify_decision(d.token)          # at the receiving node, offline
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from consent.decision_token import (
    CaPin,
    DecisionTokenError,
    SignedDecision,
    request_hash,
    verify_decision_token,
)
from servicekit.outcome import ServiceUnavailable
from trust.backend_auth import make_org_assertion

__all__ = [
    "ConsentClient",
    "ConsentRegistryError",
    "Recheck",
    "RegistryUnavailable",
    "SignedDecision",
    "DecisionTokenError",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class Recheck:
    """The registry's answer to :meth:`ConsentClient.recheck`: no patient, purpose, class or
    consent id."""

    permit: bool
    reason: str
    break_glass: bool = False  # a re-admitted break-glass grant (the reason names it)
    consent_ids: tuple[str, ...] = ()
    # Decided by the consents alone, none with a period to turn: holds while the registry's
    # consent epoch is still this one (``epoch()``).
    epoch: str | None = None


class ConsentRegistryError(Exception):
    """The registry refused a request; ``status`` and the OperationOutcome text say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"consent registry answered {status}: {message}")
        self.status = status
        self.message = message


class RegistryUnavailable(ServiceUnavailable):
    """The registry could not be reached, did not answer within the timeout, or failed (5xx):
    no decision was made. A 503 OperationOutcome wherever it reaches a client."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the consent registry is unavailable ({what}); try again")


def _outcome_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return "; ".join(i.get("diagnostics", "") for i in body.get("issue", [])) or response.text
    except ValueError:
        return response.text[:200]


class ConsentClient:
    def __init__(
        self,
        base_url: str,
        creds: Any,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        registry_org: str | None = None,
        revoked: Callable[[], Collection[str | int]] | None = None,
    ) -> None:
        """``registry_org``: trust decisions only when signed by that organisation's CA-issued
        signing certificate (the token's ``x5c``, checked against ``creds.ca_cert_pem`` and
        ``revoked()``) — never by a key fetched from ``base_url``. Without it, decisions are
        verified against the registry's JWKS as served (only as good as the transport)."""
        self.base_url = base_url.rstrip("/")
        self.creds = creds
        self.registry_org = registry_org
        self._revoked = revoked
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            verify=verify,
        )
        self._tokens: dict[tuple[str | None, str | None], tuple[str, float]] = {}
        self._jwks: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One HTTP exchange with the registry; an outage or a server failure is
        :class:`RegistryUnavailable`, never a raw network error."""
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise RegistryUnavailable("no answer within the timeout") from None
        except httpx.TransportError as exc:
            raise RegistryUnavailable(type(exc).__name__) from None
        if r.status_code >= 500:
            raise RegistryUnavailable(f"it answered {r.status_code}")
        return r

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConsentClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def access_token(
        self, *, acting_role: str | None = None, acting_user: str | None = None
    ) -> str:
        key = (acting_role, acting_user)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        # The user the organisation acts for is stated inside its signed assertion (act claim).
        act = {"role": acting_role} if acting_role else {}
        if acting_role and acting_user:
            act["sub"] = acting_user
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": make_org_assertion(
                self.creds, f"{self.base_url}/auth/token", act=act or None
            ),
        }
        r = self._send("POST", "/auth/token", data=form)
        if r.status_code != 200:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        body = r.json()
        # Renew 30 s (or a third of the lifetime) before expiry.
        ttl = float(body.get("expires_in", 60))
        expires = time.monotonic() + max(1.0, ttl - min(30.0, ttl / 3))
        with self._lock:
            self._tokens[key] = (body["access_token"], expires)
        return str(body["access_token"])

    def _request(
        self,
        method: str,
        path: str,
        *,
        acting_role: str | None = None,
        acting_user: str | None = None,
        **kw: Any,
    ) -> httpx.Response:
        for attempt in (1, 2):
            token = self.access_token(acting_role=acting_role, acting_user=acting_user)
            r = self._send(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            if r.status_code == 401 and attempt == 1:  # registry restarted / key rotated
                with self._lock:
                    self._tokens.pop((acting_role, acting_user), None)
                continue
            return r
        raise AssertionError("unreachable")

    # --- the API ----------------------------------------------------------------------------

    def decide(
        self,
        patient_pseudonym: str,
        recipient: str,
        purpose: str,
        classes: Iterable[str],
        *,
        requester: str | None = None,
        reason: str | None = None,
        acting_role: str | None = None,
        acting_user: str | None = None,
        envelope_id: str | None = None,
        pull: str | None = None,
        lookup_id: str | None = None,
        candidates: Sequence[str] = (),
    ) -> SignedDecision:
        """Ask for a signed decision; the returned decision has been verified against the JWKS
        and against the request it answers. The requester is always this organisation (the
        registry refuses a ``requester`` naming another); ``acting_role``/``acting_user`` go
        into the signed assertion (break-glass needs both, for a doctor or nurse).
        ``lookup_id``: bind the decision to a record-locator lookup instead of an envelope (the
        coordinator re-checks it by that id, :meth:`recheck_lookup`).
        ``candidates``: the same patient's pseudonyms under the other key versions the
        pseudonymisation authority still holds — this node's own evaluations of the identifier
        it holds (``OprfPseudonymiser.candidates``), never a pseudonym it was told; the
        registry decides under the one the patient is known by (issue 23), which the
        returned decision names (``patient``: one of those asked about, else refused)."""
        class_list = sorted(set(classes))
        params: list[dict[str, Any]] = [
            {"name": "patient", "valueString": patient_pseudonym},
            {"name": "recipient", "valueString": recipient},
            {"name": "purpose", "valueCode": purpose},
        ]
        if requester:
            params.append({"name": "requester", "valueString": requester})
        params += [{"name": "class", "valueCode": c} for c in class_list]
        if reason:
            params.append({"name": "reason", "valueString": reason})
        if envelope_id:  # the decision will travel in that envelope, bound to it
            params.append({"name": "envelope", "valueId": envelope_id})
        if pull:  # ETREAT carried on by a break-glass pull grant (consent.break_glass)
            params.append({"name": "pull", "valueId": pull})
        if lookup_id:  # the decision is for that record-locator lookup, bound to it
            params.append({"name": "lookup", "valueId": lookup_id})
        params += [{"name": "candidate", "valueString": c} for c in candidates]
        r = self._request(
            "POST",
            "/fhir/Consent/$decide",
            json={"resourceType": "Parameters", "parameter": params},
            acting_role=acting_role,
            acting_user=acting_user,
        )
        if r.status_code != 200:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        out = r.json()["parameter"]
        token = next(p["valueString"] for p in out if p["name"] == "decision-token")
        decided = patient_pseudonym
        if candidates:  # the registry says which it decided under: one of those asked about
            decided = next((str(p.get("valueString")) for p in out if p["name"] == "patient"), "")
            if decided not in (patient_pseudonym, *candidates):
                raise DecisionTokenError("decision is for a pseudonym that was not asked about")
        expected = request_hash(
            decided, requester or self.creds.org_id, recipient, purpose, class_list
        )
        decision = self.verify_decision(token, expected_request_hash=expected)
        if envelope_id and decision.envelope_id != envelope_id:
            raise DecisionTokenError("decision is bound to another envelope")
        if lookup_id and (decision.lookup_id != lookup_id or decision.envelope_id):
            raise DecisionTokenError("decision is not bound to this lookup")
        return decision

    def recheck(self, envelope_id: str, sender: str, recipient: str) -> Recheck:
        """Have the registry decide again, by envelope id, the question the envelope's decision
        answered (what the coordinator asks: it never names the patient, the purpose or the
        classes — it does not know them). 404 — no decision was asked for that envelope —
        raises :class:`ConsentRegistryError` like any refusal."""
        params: list[dict[str, Any]] = [
            {"name": "envelope", "valueId": envelope_id},
            {"name": "sender", "valueString": sender},
            {"name": "recipient", "valueString": recipient},
        ]
        return self._recheck(params)

    def recheck_lookup(self, lookup_id: str, sender: str, patient_pseudonym: str) -> Recheck:
        """Have the registry decide again the question bound to a record-locator lookup's id
        (what the coordinator asks for a lookup: the id, who looked up and the pseudonym looked
        up — never a purpose or classes). 404 — nothing was bound to that id — raises
        :class:`ConsentRegistryError` like any refusal. Never reusable (no epoch)."""
        params: list[dict[str, Any]] = [
            {"name": "lookup", "valueId": lookup_id},
            {"name": "sender", "valueString": sender},
            {"name": "patient", "valueString": patient_pseudonym},
        ]
        # a lookup's answer is never reusable: an epoch, were one sent, is not kept
        return replace(self._recheck(params), epoch=None)

    def _recheck(self, params: list[dict[str, Any]]) -> Recheck:
        """POST ``params`` to ``$recheck`` and read the answer (``epoch`` as the registry sent
        it: only an envelope's re-check may be reused, :meth:`recheck_lookup` drops it)."""
        r = self._request(
            "POST",
            "/fhir/Consent/$recheck",
            json={"resourceType": "Parameters", "parameter": params},
        )
        if r.status_code != 200:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        out = r.json().get("parameter", [])
        return Recheck(
            permit=any(p.get("name") == "decision" and p.get("valueCode") == "permit" for p in out),
            reason=next((str(p["valueString"]) for p in out if p.get("name") == "reason"), ""),
            break_glass=any(
                p.get("name") == "break-glass" and p.get("valueBoolean") is True for p in out
            ),
            epoch=next((str(p["valueString"]) for p in out if p.get("name") == "epoch"), None),
        )

    def epoch(self) -> str:
        """The registry's consent epoch now: a :class:`Recheck` answered with this epoch still
        holds (no consent was written since)."""
        r = self._request("GET", "/fhir/Consent/$epoch")
        if r.status_code != 200:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        out = r.json().get("parameter", [])
        return next(str(p["valueString"]) for p in out if p.get("name") == "epoch")

    def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._jwks is None or refresh:
            r = self._send("GET", "/.well-known/jwks.json")
            if r.status_code != 200:
                raise ConsentRegistryError(r.status_code, _outcome_text(r))
            self._jwks = r.json()
        return self._jwks

    def pin(self) -> CaPin | None:
        """The CA pin decisions are verified with (None: no registry organisation set)."""
        if self.registry_org is None:
            return None
        revoked = self._revoked() if self._revoked is not None else ()
        return CaPin(self.creds.ca_cert_pem, self.registry_org, revoked)

    def verify_decision(
        self,
        token: str,
        *,
        expected_request_hash: str | None = None,
        valid_at: int | None = None,
        leeway: int = 5,
    ) -> SignedDecision:
        """Verify a decision offline: against the CA pin when the registry's organisation is
        set (nothing fetched), else the JWKS (fetched once, refreshed on an unknown key)."""
        pin = self.pin()
        if pin is not None:
            return verify_decision_token(
                token,
                None,
                pin=pin,
                expected_request_hash=expected_request_hash,
                valid_at=valid_at,
                leeway=leeway,
            )
        checks: dict[str, Any] = {
            "expected_request_hash": expected_request_hash,
            "valid_at": valid_at,
            "leeway": leeway,
        }
        try:
            return verify_decision_token(token, self.jwks(), **checks)
        except DecisionTokenError as exc:
            if "unknown key" not in str(exc):
                raise
        return verify_decision_token(token, self.jwks(refresh=True), **checks)

    def create_enrolment_code(
        self, patient_pseudonym: str, *, candidates: Sequence[str] = ()
    ) -> dict[str, Any]:
        """A one-time code the patient uses to enrol (``code``, ``expires_at``, and
        ``patient``: the pseudonym it is for). ``candidates``: as for :meth:`decide` — the code
        is for the pseudonym the patient is known by (an enrolment after a key rotation reaches
        the account and consents made before it), else ``patient_pseudonym``."""
        body: dict[str, Any] = {"patient": patient_pseudonym}
        if candidates:
            body["candidates"] = list(candidates)
        r = self._request("POST", "/enrolment-codes", json=body)
        if r.status_code != 201:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        issued = dict(r.json())
        if issued.get("patient", patient_pseudonym) not in (patient_pseudonym, *candidates):
            raise ConsentRegistryError(502, "enrolment code for a pseudonym not asked about")
        return issued

    def report_disclosure(
        self,
        patient_pseudonym: str,
        recipient: str,
        purpose: str,
        classes: Iterable[str],
        *,
        decision_token: str | None = None,
        envelope_id: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "patient": patient_pseudonym,
            "recipient": recipient,
            "purpose": purpose,
            "classes": sorted(set(classes)),
        }
        for name, value in (
            ("decision_token", decision_token),
            ("envelope_id", envelope_id),
            ("user", user),
        ):
            if value is not None:
                body[name] = value
        r = self._request("POST", "/disclosures", json=body)
        if r.status_code != 201:
            raise ConsentRegistryError(r.status_code, _outcome_text(r))
        return dict(r.json())

    record_disclosure = report_disclosure
