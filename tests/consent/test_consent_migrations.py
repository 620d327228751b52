"""Migration ``consent_0006`` (the classes each envelope-bound decision permitted): a question
stored under ``consent_0005`` did not keep whether it was permitted, so it gets ``permitted = []``
(fail closed) — a question that was denied when asked stays denied after a later consent."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from consent_harness import Registry, treat_consent

from consent.store import MIGRATIONS_DIR

P = "d1" * 32
ENVELOPE = str(uuid.uuid4())


def _migrate(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.fixture
def db_url(db_url: str) -> Iterator[str]:
    """The parametrised database (SQLite, PostgreSQL), at ``consent_0005`` with one stored
    question that was denied when asked (the patient had no consent); the registry fixture then
    upgrades it to head."""
    engine = sa.create_engine(db_url)
    _migrate(engine, "consent_0005")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO consent_envelope_questions (envelope_id, patient, requester,"
                " recipient, purpose, classes, break_glass, asked_at) VALUES (:e, :p, 'hosp-a',"
                " 'clinic-b', 'TREAT', '[\"Condition\"]', :bg, :t)"
            ),
            {"e": ENVELOPE, "p": P, "bg": False, "t": dt.datetime.now(dt.UTC)},
        )
    engine.dispose()
    yield db_url


def test_a_question_stored_before_0006_permits_nothing(registry: Registry) -> None:
    coordinator = registry.org("coordinator")
    before = coordinator.recheck(ENVELOPE, "hosp-a", "clinic-b")
    assert not before.permit and "permitted nothing" in before.reason
    headers = registry.patient_headers(P)
    registry.grant(headers, treat_consent(P, classes=("Condition",)))
    after = coordinator.recheck(ENVELOPE, "hosp-a", "clinic-b")
    assert not after.permit and "permitted nothing" in after.reason  # denied stays denied
    engine = registry.http.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        permitted = conn.execute(
            sa.text("SELECT permitted FROM consent_envelope_questions WHERE envelope_id = :e"),
            {"e": ENVELOPE},
        ).scalar_one()
    assert permitted == "[]"


def test_downgrading_0007_drops_lookup_bindings_and_keeps_envelope_ones(db_url: str) -> None:
    """Below ``consent_0007`` a binding cannot say it is a lookup's, so a downgrade deletes the
    lookup bindings (fail closed) rather than let them read as envelope bindings."""
    engine = sa.create_engine(db_url)
    lookup = str(uuid.uuid4())
    try:
        _migrate(engine, "consent_0007")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO consent_envelope_questions (envelope_id, patient, requester,"
                    " recipient, purpose, classes, permitted, break_glass, asked_at, bound)"
                    " VALUES (:e, :p, 'clinic-b', 'clinic-b', 'TREAT', '[\"Condition\"]',"
                    " '[\"Condition\"]', :bg, :t, 'lookup')"
                ),
                {"e": lookup, "p": P, "bg": False, "t": dt.datetime.now(dt.UTC)},
            )
        _migrate(engine, "consent_0006", down=True)
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT envelope_id FROM consent_envelope_questions"))
            assert {row[0] for row in ids} == {ENVELOPE}
    finally:
        engine.dispose()
