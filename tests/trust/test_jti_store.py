"""Durable ``jti`` replay protection (issue 13 item 5) in the consent registry's and the
coordinator's own databases, created by their Alembic migrations, on SQLite and PostgreSQL:
a one-time assertion is refused for its whole accepted window (exp + leeway), by a second
process's cache (another worker, or the service after a restart), and exactly one of two
concurrent uses wins."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import jwt
import pytest
from sqlalchemy import Engine, func, select

from consent.schema import assertion_jtis as consent_jtis
from consent.store import migrate as migrate_consent
from coordinator.schema import assertion_jtis as coordinator_jtis
from coordinator.server import open_database
from servicekit.storage import make_engine
from trust.backend_auth import make_org_assertion, verify_org_assertion
from trust.jti_store import DbReplayCache
from trust.pki import OrgCredentials, init_ca, issue_org, load_ca_cert
from trust.tokens import TokenError

AUDIENCE = "https://registry.example/auth/token"


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, OrgCredentials]:
    ca = tmp_path_factory.mktemp("ca")
    init_ca(ca)
    return load_ca_cert(ca), issue_org(ca, "hosp-a")


def _engines(service: str, db_url: str) -> tuple[Engine, object]:
    if service == "consent":
        engine = make_engine(db_url)
        migrate_consent(engine)
        return engine, consent_jtis
    return open_database(db_url), coordinator_jtis


def _rows(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


@pytest.mark.parametrize("service", ["consent", "coordinator"])
def test_assertion_is_single_use_across_processes_and_its_whole_window(
    service: str, db_url: str, org: tuple[bytes, OrgCredentials], tmp_path: Path
) -> None:
    ca_pem, creds = org
    engine, table = _engines(service, db_url)
    try:

        def verify(token: str) -> str:
            # a fresh cache object each time: what another worker or a restarted service has
            return verify_org_assertion(
                token, ca_cert_pem=ca_pem, audience=AUDIENCE,
                replay_cache=DbReplayCache(engine, table),  # type: ignore[arg-type]
            )  # fmt: skip

        token = make_org_assertion(creds, AUDIENCE, ttl=1)
        assert verify(token) == "hosp-a"
        with pytest.raises(TokenError, match="replayed"):
            verify(token)
        # past exp (+1 s), still inside the 5 s leeway: still refused
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        deadline = time.monotonic() + 10
        while time.time() < exp + 1.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(TokenError, match="replayed"):
            verify(token)
        # the row is kept until exp + leeway (+ the sweep margin), not swept at exp
        fresh = make_org_assertion(creds, AUDIENCE, ttl=60)
        verify(fresh)
        assert _rows(engine, table) == 2

        # two concurrent uses of one assertion: exactly one passes
        racing = make_org_assertion(creds, AUDIENCE, ttl=60)
        results: list[str] = []
        barrier = threading.Barrier(2)

        def use() -> None:
            barrier.wait()
            try:
                results.append(verify(racing))
            except TokenError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=use) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r == "hosp-a" for r in results) == [False, True], results
    finally:
        engine.dispose()
