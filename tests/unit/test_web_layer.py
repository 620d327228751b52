"""The pages' pure parts: sessions (idle time-out, rotation, handles), CSRF, translations, the
panel's order and filters, the journey's institutions and goal bands."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.care.definitions import load_catalog
from node.care.model_gate import LABEL_SYSTEM, NOT_FOR_CLINICAL_USE
from node.portal.journey import timeline, trends
from node.portal.panel import panel_rows
from servicekit.web.csrf import CsrfRefused, check_csrf
from servicekit.web.i18n import Translator
from servicekit.web.sessions import SessionStore

PLAN_SYSTEM = "https://ipjms.example.org/fhir/sid/care-plan"
CONTROL = "https://ipjms.example.org/fhir/StructureDefinition/care-control-status"


def test_sessions_end_after_the_idle_time_and_rotate_at_sign_in() -> None:
    now = [0.0]
    store = SessionStore(idle_seconds=60, clock=lambda: now[0])
    session = store.new("zh-CN")
    old_sid, old_csrf = session.sid, session.csrf
    now[0] = 59
    assert store.get(old_sid) is session  # and the idle clock restarts
    store.rotate(session)
    assert store.get(old_sid) is None and session.sid != old_sid and session.csrf != old_csrf
    now[0] = 59 + 61
    assert store.get(session.sid) is None


def test_handles_are_opaque_and_belong_to_their_session() -> None:
    store = SessionStore()
    a, b = store.new("en"), store.new("en")
    handle = a.handle_for("Patient/p-110101195103140021")
    assert "1101" not in handle and a.handle_for("Patient/p-110101195103140021") == handle
    assert a.resolve(handle) == "Patient/p-110101195103140021"
    assert b.resolve(handle) is None


def test_csrf_needs_the_session_token_on_every_unsafe_method() -> None:
    check_csrf("GET", "t" * 43, None, None)
    check_csrf("POST", "t" * 43, "t" * 43, None)
    check_csrf("POST", "t" * 43, None, "t" * 43)
    for header, field in ((None, None), ("x" * 43, None), (None, ""), ("", "")):
        with pytest.raises(CsrfRefused):
            check_csrf("POST", "t" * 43, header, field)
    with pytest.raises(CsrfRefused):
        check_csrf("DELETE", "", "", None)  # a session without a token accepts nothing


def test_translations_default_to_chinese_and_keep_english_ids() -> None:
    portal = Path(__file__).resolve().parents[2] / "node" / "portal" / "locale"
    t = Translator([portal])
    assert t.gettext("zh-CN", "Sign in") == "登录"
    assert t.gettext("zh-CN", "Acknowledge") == "确认"
    assert t.gettext("en", "Acknowledge") == "Acknowledge"
    assert t.gettext("xx", "Sign in") == "登录"  # unknown language → the region's default


def test_every_keyed_message_has_english_words() -> None:
    """A notice or refusal named by a key ("notice:enrolled") has no words of its own: every
    such id in any app's catalog needs an English text, or an English page shows the raw key."""
    import re

    from babel.messages.pofile import read_po

    root = Path(__file__).resolve().parents[2]
    dirs = [root / "node" / "portal" / "locale", root / "coordinator" / "console" / "locale"]
    t = Translator(dirs)
    keyed = re.compile(r"^[a-z_-]+:[a-z_-]+$")
    ids = set()
    for po in [*root.glob("node/portal/locale/*/LC_MESSAGES/messages.po"),
               *root.glob("coordinator/console/locale/*/LC_MESSAGES/messages.po"),
               *root.glob("servicekit/web/locale/*/LC_MESSAGES/messages.po")]:  # fmt: skip
        with po.open("rb") as fh:
            ids |= {m.id for m in read_po(fh) if isinstance(m.id, str) and keyed.match(m.id)}
    assert "notice:refused" in ids  # the check sees the catalogs
    raw = sorted(i for i in ids if t.gettext("en", i) == i)
    assert not raw, f"keyed messages without English words: {raw}"
    assert t.gettext("en", "notice:refused").startswith("Refused")


def _plan(pid: str, key: str, control: str) -> dict:
    return {"resourceType": "CarePlan", "subject": {"reference": f"Patient/{pid}"},
            "identifier": [{"system": PLAN_SYSTEM, "value": f"{key}/{pid}"}],
            "extension": [{"url": CONTROL, "valueCode": control}]}  # fmt: skip


def test_panel_sorts_by_open_alert_severity_then_risk_and_filters() -> None:
    patients = [{"resourceType": "Patient", "id": p, "name": [{"text": p.upper()}]}
                for p in ("a", "b", "c", "d")]  # fmt: skip
    plans = [_plan("a", "hypertension", "controlled"), _plan("b", "heart-failure", "uncontrolled"),
             _plan("c", "hypertension", "unknown"), _plan("d", "copd", "controlled"),
             _plan("c", "type-2-diabetes", "uncontrolled")]  # fmt: skip
    issues = [{"patient": {"reference": "Patient/a"}, "severity": "moderate"},
              {"patient": {"reference": "Patient/b"}, "severity": "high"},
              {"patient": {"reference": "Patient/b"}, "severity": "low"}]  # fmt: skip
    risks = [{"subject": {"reference": "Patient/d"}, "occurrenceDateTime": "2026-01-01",
              "prediction": [{"probabilityDecimal": 0.4}]},
             {"subject": {"reference": "Patient/c"}, "occurrenceDateTime": "2026-01-02",
              "prediction": [{"probabilityDecimal": 0.1}]},
             {"subject": {"reference": "Patient/c"}, "occurrenceDateTime": "2026-01-01",
              "prediction": [{"probabilityDecimal": 0.9}]}]  # fmt: skip
    rows = panel_rows(plans, patients, issues, risks)
    assert [r.name for r in rows] == ["B", "A", "D", "C"]
    assert rows[0].open_alerts == 2 and rows[0].top_severity == "high"
    assert rows[3].risk == 0.1  # the latest assessment, not the highest
    assert rows[3].control == "uncontrolled" and rows[3].pathways == [
        "hypertension", "type-2-diabetes"]  # fmt: skip
    assert [r.name for r in panel_rows(plans, patients, issues, risks, pathway="hypertension")] \
        == ["A", "C"]  # fmt: skip
    assert [r.name for r in panel_rows(plans, patients, issues, risks, control="controlled")] \
        == ["A", "D"]  # fmt: skip
    # a score labelled not for clinical use (the care worker's risk-model gate) ranks no one
    gated = {**risks[0], "meta": {"tag": [{"system": LABEL_SYSTEM, "code": NOT_FOR_CLINICAL_USE}]}}
    d = next(r for r in panel_rows(plans, patients, issues, [gated]) if r.name == "D")
    assert d.risk is None


def test_timeline_marks_each_item_with_its_institution() -> None:
    local = {"resourceType": "Condition", "code": {"text": "Heart failure"},
             "recordedDate": "2026-01-02"}  # fmt: skip
    imported = {"resourceType": "Observation", "status": "final", "code": {"text": "BNP"},
                "effectiveDateTime": "2026-01-03",
                "meta": {"source": "urn:ipjms:org:hosp-a#bnp-1"}}  # fmt: skip
    items = timeline([local, imported, {"resourceType": "Provenance"}])
    assert [(i.kind, i.source) for i in items] == [("Observation", "hosp-a"), ("Condition", None)]


def test_trend_bands_come_from_level_goals_only() -> None:
    catalog = load_catalog()

    def obs(code: str, value: float, unit: str, day: int) -> dict:
        return {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "effectiveDateTime": f"2026-01-0{day}T08:00:00+00:00",
                "valueQuantity": {"value": value, "unit": unit,
                                  "system": "http://unitsofmeasure.org", "code": unit}}  # fmt: skip

    def goal(code: str, value: float, unit: str, comparator: str) -> dict:
        return {"target": [{"measure": {"coding": [{"system": "http://loinc.org", "code": code}]},
                            "detailQuantity": {"value": value, "unit": unit,
                                               "comparator": comparator}}]}  # fmt: skip

    data = [obs("4548-4", 8.1, "%", 1), obs("4548-4", 7.2, "%", 2), obs("29463-7", 70, "kg", 3)]
    goals = [goal("4548-4", 7, "%", "<"), goal("29463-7", 2, "kg", "<=")]
    found = {t.measure: t for t in trends(data, goals, catalog)}
    hba1c = next(t for t in found.values() if t.unit == "%")
    weight = next(t for t in found.values() if t.unit == "kg")
    assert hba1c.values == [8.1, 7.2] and hba1c.band == (0.0, 7.0)
    assert weight.band is None  # a change goal (2 kg in 3 days), not a level


def test_a_consent_in_plain_words_and_narrowing_never_widens() -> None:
    from node.portal.consent_words import grant_resource, narrowed, plain_words

    body = {**grant_resource("a1" * 32, "clinic-b", "TREAT", ["Condition", "Observation"], None),
            "id": "c-1"}  # fmt: skip
    [line] = plain_words(body)
    assert (line.who, line.purposes, line.classes, line.until) == (
        ("clinic-b",), ("TREAT",), ("Condition", "Observation"), None)  # fmt: skip
    from datetime import UTC, datetime

    less = narrowed(body, ["Condition", "Procedure"], datetime(2027, 1, 1, tzinfo=UTC))
    [line] = plain_words(less)
    assert line.classes == ("Condition",) and line.until == "2027-01-01"  # Procedure not added
