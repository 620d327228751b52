"""The pseudonymisation authority: an RFC 9497 OPRF evaluator over HTTP (``ipjms pseudonym serve``).

Why a service of its own (not inside the consent registry or the coordinator): whoever holds the
OPRF key *and* a table of pseudonyms can reverse them by brute force over the small national-id
space. The registry and the coordinator's locator both hold every patient's pseudonym, so the
key lives in a process that holds none — it sees only blinded elements — with its own data
folder, run by the regional authority.

``POST /oprf/evaluate`` — ``Authorization: Bearer <organisation assertion>``
(:func:`trust.backend_auth.make_org_assertion`, audience ``<public url>/oprf/evaluate``, one
use); body ``{"version": N (optional: the current key), "blinded": ["<64 hex>", …]}`` (at most
:data:`MAX_BATCH`); answer ``{"suite", "version", "evaluated": [...]}`` in the same order.

* **Who may ask**: organisations certified by the regional CA, not revoked (a missing or stale
  CRL refuses everyone), and named in ``clients`` (the region's nodes). The coordinator and the
  registry are not clients: with a locator full of pseudonyms, OPRF access would let them test
  guesses.
* **Rate limit** per organisation (:class:`ElementBudget`): ``budget_per_hour`` evaluations
  with a ``budget_burst``; over it, 429 with ``Retry-After``. In memory, per process.
* **Audit**: every call (granted or refused) is an AuditEvent in the service's hash-chained
  ledger: the organisation, the number of elements, the key version, the outcome — never an
  element (they reveal nothing, but they are not kept either) and never an identifier (it has
  none).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import MetaData

from servicekit.outcome import (
    BadRequest,
    FhirError,
    Forbidden,
    Unauthorized,
    install_error_handlers,
)
from servicekit.request_limits import InputLimits, install_request_limits
from servicekit.storage import make_engine, sqlite_url
from trust import oprf
from trust.audit_events import oprf_evaluation
from trust.audit_ledger import AuditLedger
from trust.jti_store import DbReplayCache, jti_table
from trust.pseudonym_keys import KeyRingError, load_key_ring

__all__ = ["PseudonymSettings", "ElementBudget", "create_app", "MAX_BATCH"]

log = logging.getLogger("ipjms.pseudonym")

#: elements in one request: a node's batch of patients (e.g. a cohort or a first enrolment run);
#: larger backfills are several calls, each counted against the budget
MAX_BATCH = 500


class PseudonymSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IPJMS_PSEUDONYM_", extra="ignore")

    #: this service's organisation id (the observer in its audit events): the regional authority
    org_id: str = "authority"
    data_dir: Path = Path("pseudonym-data")
    #: database URL; default SQLite ``<data_dir>/pseudonym.db`` (the audit ledger, used jtis)
    db_url: str | None = None
    #: the regional CA folder: organisations authenticate with assertions its keys certified
    ca_dir: Path | None = None
    #: public base URL; the assertion audience is ``<public_url>/oprf/evaluate``
    public_url: str = "http://127.0.0.1:8400"
    #: the organisations that may evaluate (the region's nodes); nobody else, coordinator included
    clients: list[str] = []
    #: evaluations per organisation per hour, and the burst. Source of the figure: a node asks
    #: once per patient it meets (the pseudonym is stored), so a hospital registering a few
    #: thousand patients a day stays far below it; an insider guessing national ids gets 20,000
    #: an hour — against the ~1.3×10¹¹ plausible resident ids (issue 23) that is ~750 years,
    #: where an HMAC key on the node gave ~7 hours on one core.
    budget_per_hour: float = 20_000.0
    budget_burst: float = 5_000.0

    def keys_dir(self) -> Path:
        return self.data_dir / "oprf-keys"


class ElementBudget:
    """A token bucket per organisation, counted in evaluated elements."""

    def __init__(self, per_hour: float, burst: float, clock: Any = time.monotonic) -> None:
        self.rate = per_hour / 3600.0
        self.burst = burst
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, org: str, count: int) -> float:
        """0.0 when ``count`` elements are granted, else the seconds to wait."""
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(org, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if count <= tokens:
                self._state[org] = (tokens - count, now)
                return 0.0
            self._state[org] = (tokens, now)
            if count > self.burst or self.rate <= 0:
                return float("inf")
            return (count - tokens) / self.rate


def _parse(body: Any) -> tuple[int | None, list[bytes]]:
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object with 'blinded'")
    version = body.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise BadRequest("version must be an integer", expression=["version"])
    blinded = body.get("blinded")
    if not isinstance(blinded, list) or not blinded or len(blinded) > MAX_BATCH:
        raise BadRequest(f"blinded is a list of 1-{MAX_BATCH} elements", expression=["blinded"])
    out = []
    for i, item in enumerate(blinded):
        try:
            element = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            element = b""
        if len(element) != oprf.ELEMENT_BYTES:
            raise BadRequest(f"blinded[{i}] is not 64 hex digits", expression=[f"blinded[{i}]"])
        out.append(element)
    return version, out


def create_app(settings: PseudonymSettings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ring = load_key_ring(settings.keys_dir())
    engine = make_engine(settings.db_url or sqlite_url(settings.data_dir, "pseudonym"))
    metadata = MetaData()
    jtis = jti_table("pseudonym_assertion_jti", metadata)
    metadata.create_all(engine)
    ledger = AuditLedger(engine)
    replay = DbReplayCache(engine, jtis)
    budget = ElementBudget(settings.budget_per_hour, settings.budget_burst)
    audience = settings.public_url.rstrip("/") + "/oprf/evaluate"
    clients = frozenset(settings.clients)

    app = FastAPI(title="IPJMS pseudonymisation authority", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_request_limits(app, InputLimits(max_body_bytes=64 * 1024))
    app.state.ledger = ledger
    app.state.budget = budget

    def audit(org: str, count: int, version: int | None, outcome: str) -> None:
        ledger.append(
            oprf_evaluation(
                org_id=org, observer=settings.org_id, count=count, key_version=version,
                outcome=outcome,
            )
        )  # fmt: skip

    def caller(request: Request) -> str:
        from trust.backend_auth import verify_org_assertion
        from trust.pki import load_ca_cert, revocation_list

        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise Unauthorized("an organisation assertion is required (Authorization: Bearer)")
        if settings.ca_dir is None:
            raise Unauthorized("this service has no CA configured; nobody can be authenticated")
        try:
            org = verify_org_assertion(
                header[7:].strip(),
                ca_cert_pem=load_ca_cert(settings.ca_dir),
                audience=audience,
                replay_cache=replay,
                revoked=revocation_list(settings.ca_dir),
            )
        except Exception as exc:  # every refusal is a 401 naming why, never a 500
            raise Unauthorized(f"organisation assertion refused: {exc}") from None
        return org

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "suite": oprf.SUITE, "current_version": ring.current}

    @app.post("/oprf/evaluate")
    async def evaluate(request: Request) -> dict[str, Any]:
        org = caller(request)
        if org not in clients:
            audit(org, 0, None, "refused: not a client")
            raise Forbidden(f"{org} is not a client of the pseudonymisation authority")
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        version, elements = _parse(body)
        try:
            version, key = ring.key(version)
        except KeyRingError as exc:
            raise BadRequest(str(exc), expression=["version"]) from None
        wait = budget.take(org, len(elements))
        if wait:
            audit(org, len(elements), version, "refused: rate limit")
            retry = "3600" if wait == float("inf") else str(max(1, int(wait) + 1))
            raise FhirError(
                f"{org} is over its evaluation budget ({settings.budget_per_hour:g} an hour)",
                status=429, code="throttled", headers={"Retry-After": retry},
            )  # fmt: skip
        try:
            evaluated = [oprf.blind_evaluate(key, e).hex() for e in elements]
        except oprf.OprfError as exc:
            audit(org, len(elements), version, "refused: invalid element")
            raise BadRequest(f"a blinded element is invalid: {exc}") from None
        audit(org, len(elements), version, "evaluated")
        log.info("oprf evaluated org=%s count=%d version=%d", org, len(elements), version)
        return {"suite": oprf.SUITE, "version": version, "evaluated": evaluated}

    return app
