"""The pseudonymisation authority: an RFC 9497 OPRF evaluator over HTTP (``ipjms pseudonym serve``).

Why a service of its own (not inside the consent registry or the coordinator): whoever holds the
OPRF key *and* a table of pseudonyms can reverse them by brute force over the small national-id
space. The registry and the coordinator's locator both hold every patient's pseudonym, so the
key lives in a process that holds none — it sees only blinded elements — with its own data
folder, run by the regional authority.

``POST /oprf/evaluate`` — ``Authorization: Bearer <organisation assertion>``
(:func:`trust.backend_auth.make_org_assertion`, audience ``<public url>/oprf/evaluate``, one
use); body ``{"version": N (optional: the current key), "blinded": ["<64 hex>", …]}`` (at most
:data:`MAX_BATCH`); answer ``{"suite", "version", "key_fingerprint", "evaluated": [...]}`` in
the same order.
``GET /keys`` names the current version and every held version's ``key_fingerprint``
(:func:`trust.pseudonym_keys.key_fingerprint`: the public key ``k·G``, which reveals nothing
usable about the key), so a node can tell a lost-and-remade ``v1`` from the one it knew; public,
no budget, and it asks no database, so a node uses the pseudonyms it stored while the database
is down. ``GET /healthz`` (readiness) carries the same key information for operators; it
answers 503 (``"status": "unavailable"`` and the reason, no URL, path or driver
message) while the service's database does not answer — every evaluation writes its budget and
its audit entry there, so without it none can be answered. ``GET /livez`` (liveness) asks no
database.

* **Who may ask**: organisations certified by the regional CA, not revoked (a missing or stale
  CRL refuses everyone), and named in ``clients`` (the region's nodes). The coordinator and the
  registry are not clients: with a locator full of pseudonyms, OPRF access would let them test
  guesses.
* **Rate limit** per organisation (:class:`ElementBudget`): ``budget_per_hour`` evaluations
  with a ``budget_burst``; over it, 429 with ``Retry-After``. Kept in the service's database
  (table ``oprf_budget``), so a restart or another worker process does not refill it. The
  figures are derived below (:data:`NEW_PATIENTS_PER_DAY`) from ordinary use, not from the size
  of the id space: the attacker of ``tests/exchange/test_exchange_pseudonym_leak.py`` knows a
  block of 1,000 candidates, so the burst must stay well under that.
* **Audit**: every call (granted or refused) is an AuditEvent in the service's hash-chained
  ledger: the organisation, the number of elements, the key version, the outcome — never an
  element (they reveal nothing, but they are not kept either) and never an identifier (it has
  none).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import (
    Column,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from servicekit.outcome import (
    BadRequest,
    FhirError,
    Forbidden,
    Unauthorized,
    install_error_handlers,
)
from servicekit.request_limits import InputLimits, install_request_limits
from servicekit.storage import make_engine, sqlite_url
from trust import group_backend, oprf
from trust.audit_events import oprf_evaluation
from trust.audit_ledger import AuditLedger
from trust.jti_store import DbReplayCache, jti_table
from trust.oprf_client import MAX_BATCH
from trust.pseudonym_keys import KeyRingError, load_key_ring

__all__ = ["PseudonymSettings", "ElementBudget", "create_app", "MAX_BATCH"]

log = logging.getLogger("ipjms.pseudonym")


# --- the budget, derived from ordinary use (ASSUMPTIONS, stated, not measured) ----------------
#: ASSUMPTION: the busiest node — a large tertiary hospital — meets at most ~1,000 patients a day
#: that are new to it (a 1,000-bed hospital has of the order of 50,000 admissions and a few
#: hundred thousand outpatient attendances a year, most of them returning patients whose
#: pseudonym the node already has; 1,000 new a day is ~365,000 a year, a generous upper bound).
#: "Already has" holds across restarts: the node keeps every pseudonym it obtained in its own
#: database (node/pseudonym_store, per key version), so a restarted node of 100,000 patients asks
#: nothing again — with an in-memory cache only, it re-asked for all of them, about two weeks
#: at this budget. Only a node's very first load of a large cohort (and the first use of a new
#: key version after a rotation) needs more, granted for its window (BULK_LOAD_BUDGET in
#: deploy/demo/pseudonym_authority.py).
NEW_PATIENTS_PER_DAY = 1_000
#: ASSUMPTION: a new patient costs one regional pseudonym and about two routing pseudonyms (its
#: first referral or copy out and the answer in). Not counted: while an older key version is
#: held after a rotation, a patient's first consent question also offers their pseudonym under
#: it — one more evaluation for a patient the node never evaluated under that version (those
#: met after the rotation); retire the old version once its patients have re-consented.
EVALUATIONS_PER_NEW_PATIENT = 3
#: ASSUMPTION: registrations happen in a ~10-hour working day, so the hourly rate is the daily
#: need spread over 10 hours (300 an hour), not over 24.
WORKING_HOURS_PER_DAY = 10
DEFAULT_BUDGET_PER_HOUR = NEW_PATIENTS_PER_DAY * EVALUATIONS_PER_NEW_PATIENT / WORKING_HOURS_PER_DAY
#: two client batches: a page of the locator publish and the routing pseudonyms beside it. An
#: insider with a node's credentials gets at most this at once — a fifth of the 1,000-candidate
#: block of the leak test — and then ~5 a minute, every call audited, until revoked: the block
#: costs more than 2.5 hours of evaluations far above the node's normal rate.
DEFAULT_BUDGET_BURST = 2 * MAX_BATCH


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
    #: evaluations per organisation per hour, and the burst: derived above from the busiest
    #: node's new patients a day (DEFAULT_BUDGET_PER_HOUR, DEFAULT_BUDGET_BURST); a region with
    #: larger nodes sets its own figures (IPJMS_PSEUDONYM_BUDGET_PER_HOUR / _BURST)
    budget_per_hour: float = DEFAULT_BUDGET_PER_HOUR
    budget_burst: float = DEFAULT_BUDGET_BURST

    def keys_dir(self) -> Path:
        return self.data_dir / "oprf-keys"


def budget_table(metadata: MetaData) -> Table:
    """Each organisation's tokens left and when they were last counted (wall-clock seconds)."""
    return Table(
        "oprf_budget",
        metadata,
        Column("org_id", String(255), primary_key=True),
        Column("tokens", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    )


class ElementBudget:
    """A token bucket per organisation, counted in evaluated elements, kept in the service's
    database: a restart or a second worker process sees what was spent."""

    def __init__(
        self, engine: Engine, table: Table, per_hour: float, burst: float, clock: Any = time.time
    ) -> None:
        self.engine = engine
        self.table = table
        self.rate = per_hour / 3600.0
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()  # SQLite: one writer per process at a time

    def take(self, org: str, count: int) -> float:
        """0.0 when ``count`` elements are granted, else the seconds to wait."""
        t = self.table
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.tokens, t.c.updated_at).where(t.c.org_id == org).with_for_update()
            ).first()
            now = self.clock()
            tokens, last = (row[0], row[1]) if row else (self.burst, now)
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            granted = count <= tokens
            left = tokens - count if granted else tokens
            if row is None:
                conn.execute(insert(t).values(org_id=org, tokens=left, updated_at=now))
            else:
                conn.execute(update(t).where(t.c.org_id == org).values(tokens=left, updated_at=now))
        if granted:
            return 0.0
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


def _has_served(engine: Engine, ledger: AuditLedger, budgets: Table) -> bool:
    """Whether this authority's database shows it answered before (audit entries, budgets)."""
    if ledger.count() > 0:
        return True
    with engine.connect() as conn:
        return conn.execute(select(budgets.c.org_id).limit(1)).first() is not None


def database_problem(engine: Engine) -> str | None:
    """Why the service's database does not answer now (None: it does). The reason names no
    URL, path or driver message (``/healthz`` is public); the log has the error's class.

    SQLite: the file is opened afresh (read-write, never created) and read — the pool's open
    connections would go on answering from a file that was deleted or whose volume went away,
    writing what a restart then loses. PostgreSQL: one pre-pinged connection runs ``SELECT 1``.
    """
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        uri = Path(str(engine.url.database)).resolve().as_uri() + "?mode=rw"
        try:
            probe = sqlite3.connect(uri, uri=True, timeout=2.0)
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                probe.close()
        except sqlite3.Error as exc:
            log.warning("readiness: the SQLite database cannot be opened (%s)", type(exc).__name__)
            return "the database file cannot be opened"
        return None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness: the database does not answer (%s)", type(exc).__name__)
        return "the database does not answer"
    return None


def create_app(settings: PseudonymSettings) -> FastAPI:
    group = group_backend.selected()  # GroupUnavailableError: names what to install, at start
    if not group.constant_time:
        log.warning(
            "OPRF group: %s (not constant time; %s set: a one-machine demo only)",
            group.name, group_backend.ALLOW_PURE_PYTHON_ENV,
        )  # fmt: skip
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url or sqlite_url(settings.data_dir, "pseudonym"))
    metadata = MetaData()
    jtis = jti_table("pseudonym_assertion_jti", metadata)
    budgets = budget_table(metadata)
    metadata.create_all(engine)
    ledger = AuditLedger(engine)
    ring = load_key_ring(settings.keys_dir(), has_served=_has_served(engine, ledger, budgets))
    fingerprints = ring.fingerprints()
    replay = DbReplayCache(engine, jtis)
    budget = ElementBudget(engine, budgets, settings.budget_per_hour, settings.budget_burst)
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

    keys_info = {
        "suite": oprf.SUITE, "current_version": ring.current,
        "key_fingerprints": {str(v): fp for v, fp in sorted(fingerprints.items())},
        "group": group.name,
    }  # fmt: skip

    @app.get("/keys")
    def keys() -> dict[str, Any]:
        """The key information a node needs to use what it stored (its current version and
        every held version's fingerprint): public, no budget, no authentication, and no
        database asked — so a node can use its stored pseudonyms while the database is down."""
        return dict(keys_info)

    @app.get("/healthz", response_model=None)
    def healthz() -> dict[str, Any] | JSONResponse:
        """Readiness: the database answers (503 with the reason while it does not — every
        evaluation writes its budget and audit entry there); the key information either way
        (for operators: nodes read ``/keys``)."""
        keys = dict(keys_info)
        problem = database_problem(engine)
        if problem is not None:
            return JSONResponse(
                {"status": "unavailable", "reason": problem, **keys}, status_code=503
            )
        return {"status": "ok", **keys}

    @app.get("/livez")
    def livez() -> dict[str, str]:
        """Liveness for an orchestrator: the process answers (no database asked, so a database
        outage never restarts the authority)."""
        return {"status": "ok"}

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
        return {
            "suite": oprf.SUITE, "version": version,
            "key_fingerprint": fingerprints[version], "evaluated": evaluated,
        }  # fmt: skip

    return app
