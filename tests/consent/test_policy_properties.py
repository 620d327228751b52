"""Must-show 1: property-based tests of the consent policy engine.

The oracle below re-reads the provision trees directly (it does not use ``rules_of``), so these
tests compare two independent readings of the semantics documented in ``consent/policy.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consent.policy import (
    PURPOSES,
    ConsentRecord,
    Decision,
    DecisionRequest,
    Period,
    Provision,
    decide,
)

ORGS = ["org-a", "org-b", "org-c"]
CLASSES = ["Condition", "Observation", "Procedure", "MedicationRequest", "AllergyIntolerance"]
PATIENTS = ["p1", "p2"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


opt_set = lambda items: st.none() | st.frozensets(st.sampled_from(items), min_size=1)  # noqa: E731


@st.composite
def periods(draw: st.DrawFn) -> Period | None:
    if draw(st.booleans()):
        return None
    a = draw(st.none() | st.integers(0, 20))
    b = draw(st.none() | st.integers(0, 20))
    if a is not None and b is not None and b < a:
        a, b = b, a
    return Period(None if a is None else day(a), None if b is None else day(b))


@st.composite
def provisions(draw: st.DrawFn, nested: bool) -> Provision:
    # Steered towards permits (two in three rules), so that permits, partial permits and
    # overlapping / disjoint data periods are common rather than rare (see the generator test).
    return Provision(
        type=draw(st.sampled_from(["permit", "permit", "deny"])),
        actors=draw(opt_set(ORGS)),
        purposes=draw(opt_set(sorted(PURPOSES))),
        classes=draw(opt_set(CLASSES)),
        period=draw(periods()),
        data_period=draw(periods()) if nested else None,  # dataPeriod: root provision only
        provisions=tuple(draw(st.lists(provisions(False), max_size=3))) if nested else (),
    )


@st.composite
def consents(draw: st.DrawFn, idx: int) -> ConsentRecord:
    return ConsentRecord(
        id=f"c{idx}",
        patient=draw(st.sampled_from(["p1", "p1", "p1", "p2"])),  # mostly the requested one
        status=draw(st.sampled_from(["active", "active", "active", "inactive", "rejected"])),
        provision=draw(provisions(True)),
        period=draw(periods()),
    )


@st.composite
def consent_sets(draw: st.DrawFn) -> list[ConsentRecord]:
    n = draw(st.integers(0, 5))
    return [draw(consents(i)) for i in range(n)]


requests = st.builds(
    DecisionRequest,
    patient=st.sampled_from(["p1", "p1", "p1", "p2"]),
    requester=st.sampled_from(ORGS),
    recipient=st.sampled_from(ORGS),
    purpose=st.sampled_from(sorted(PURPOSES)),
    classes=st.frozensets(st.sampled_from(CLASSES), min_size=1),
    at=st.integers(-2, 22).map(day),
)


# --- the oracle: an independent reading of the documented semantics --------------------------


def _in(period: Period | None, at: datetime) -> bool:
    if period is None:
        return True
    return (period.start is None or at >= period.start) and (period.end is None or at < period.end)


def _matches(p: Provision, root: Provision, req: DecisionRequest, cls: str | None) -> bool:
    actors = p.actors if p.actors is not None else root.actors
    purposes = p.purposes if p.purposes is not None else root.purposes
    classes = p.classes if p.classes is not None else root.classes
    period = p.period if p.period is not None else root.period
    if actors is not None and req.recipient not in actors:
        return False
    if purposes is not None and req.purpose not in purposes:
        return False
    if not _in(period, req.at):
        return False
    if cls is None:  # "does this provision cover everything requested?"
        return classes is None
    return classes is None or cls in classes


def _live(c: ConsentRecord, req: DecisionRequest) -> bool:
    return c.patient == req.patient and c.status == "active" and _in(c.period, req.at)


def _provision_rules(c: ConsentRecord) -> list[Provision]:
    root = c.provision
    own = [root] if root.type == "permit" or root.actors or root.purposes or root.classes else []
    return own + list(root.provisions)


def oracle_permits(cs: list[ConsentRecord], req: DecisionRequest, cls: str) -> bool:
    live = [c for c in cs if _live(c, req)]
    for c in live:
        for p in _provision_rules(c):
            if p.type == "deny" and _matches(p, c.provision, req, cls):
                return False
    return any(
        p.type == "permit" and _matches(p, c.provision, req, cls)
        for c in live
        for p in _provision_rules(c)
    )


def oracle_data_window(
    cs: list[ConsentRecord], req: DecisionRequest, granted: set[str]
) -> tuple[Period | None, bool]:
    """The window of data the permit covers: the overlap of the dataPeriods of every consent
    whose permit grants one of the classes; and whether that overlap is empty."""
    windows = [
        c.provision.data_period
        for c in cs
        if _live(c, req)
        and c.provision.data_period is not None
        and any(
            p.type == "permit" and _matches(p, c.provision, req, cls)
            for p in _provision_rules(c)
            for cls in granted
        )
    ]
    if not windows:
        return None, False
    starts = [w.start for w in windows if w.start is not None]
    ends = [w.end for w in windows if w.end is not None]
    window = Period(max(starts) if starts else None, min(ends) if ends else None)
    empty = window.start is not None and window.end is not None and window.end <= window.start
    return window, empty


def oracle_denies_all(cs: list[ConsentRecord], req: DecisionRequest) -> bool:
    return any(
        p.type == "deny" and _matches(p, c.provision, req, None)
        for c in cs
        if _live(c, req)
        for p in _provision_rules(c)
    )


PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Narrower properties (they were at 60 examples, which reached only 4-25 permits per run).
QUICK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(consent_sets(), requests)
def test_never_permits_what_a_deny_or_missing_permit_forbids(cs, req) -> None:
    d = decide(cs, req)
    # what the generator reached (pytest --hypothesis-show-statistics)
    event("permit" if d.permit else "deny")
    if d.permit and d.refused_classes:
        event("partial permit")
    if d.permit and d.data_period is not None:
        event("permit limited to a data window")
    if "data periods do not overlap" in d.reason:
        event("deny: data windows do not overlap")
    assert d.classes <= req.classes, "never a class that was not requested"
    assert d.permit == bool(d.classes)
    for cls in d.classes:
        assert oracle_permits(cs, req, cls), f"{cls} permitted without a permit or despite a deny"
    if oracle_denies_all(cs, req):
        assert not d.permit
    # and the engine is not stricter than the semantics either (no false refusals); the data
    # window is the overlap of the permitting consents' dataPeriods, and none at all denies
    if not oracle_denies_all(cs, req):
        expected = {c for c in req.classes if oracle_permits(cs, req, c)}
        window, empty = oracle_data_window(cs, req, expected)
        if expected and empty:
            assert not d.permit and "data periods do not overlap" in d.reason
        else:
            assert set(d.classes) == expected
            assert d.data_period == (window if d.permit else None)
    assert d.refused_classes == req.classes - d.classes


@PROPS
@given(consent_sets(), requests)
def test_never_a_class_outside_an_applicable_permit(cs, req) -> None:
    d = decide(cs, req)
    covering = set()
    for c in cs:
        if not _live(c, req):
            continue
        for p in _provision_rules(c):
            if p.type == "permit":
                covering |= {cls for cls in req.classes if _matches(p, c.provision, req, cls)}
    assert d.classes <= covering
    for cid in d.consent_ids:
        assert cid in {c.id for c in cs if _live(c, req)}, "only live consents are cited"


@QUICK
@given(consent_sets(), requests)
def test_denies_after_revocation(cs, req) -> None:
    revoked = [replace(c, status="inactive") for c in cs]
    d = decide(revoked, req)
    assert not d.permit and not d.classes
    # revoking only the consents a permit relied on removes what they alone permitted
    before = decide(cs, req)
    if before.permit:
        used = set(before.consent_ids)
        after = decide([replace(c, status="inactive") if c.id in used else c for c in cs], req)
        for cls in after.classes:
            assert oracle_permits([c for c in cs if c.id not in used], req, cls)


@QUICK
@given(consent_sets(), requests, st.integers(1, 30))
def test_denies_outside_the_consent_period(cs, req, days) -> None:
    # Give every consent a period that ended before the request, or starts after it.
    ended = [replace(c, period=Period(None, req.at - timedelta(days=days))) for c in cs]
    future = [replace(c, period=Period(req.at + timedelta(seconds=1), None)) for c in cs]
    assert not decide(ended, req).permit
    assert not decide(future, req).permit
    # the end instant itself is outside (end exclusive); the start instant is inside
    at_end = [replace(c, period=Period(None, req.at)) for c in cs]
    assert not decide(at_end, req).permit


@QUICK
@given(consent_sets(), requests, st.sampled_from(CLASSES))
def test_adding_a_deny_never_widens_and_removes_its_class(cs, req, cls) -> None:
    before = decide(cs, req)
    blocker = ConsentRecord(
        "block",
        req.patient,
        "active",
        Provision("deny", actors=frozenset({req.recipient}), classes=frozenset({cls})),
    )
    after = decide([*cs, blocker], req)
    assert after.classes <= before.classes
    assert cls not in after.classes
    deny_all = replace(blocker, provision=Provision("deny", actors=frozenset({req.recipient})))
    assert not decide([*cs, deny_all], req).permit


@QUICK
@given(consent_sets(), requests)
def test_other_patients_consents_never_count(cs, req) -> None:
    others = [replace(c, patient="someone-else") for c in cs]
    assert decide(others, req) == Decision(
        False, frozenset(), (), "no active consent covers this patient", req.classes
    )


windows = st.builds(
    lambda a, b: (
        Period(day(min(a, b)), day(max(a, b)))
        if a is not None and b is not None
        else Period(None if a is None else day(a), None if b is None else day(b))
    ),
    st.none() | st.integers(0, 20),
    st.none() | st.integers(0, 20),
)


@QUICK
@given(st.lists(windows, min_size=1, max_size=4), requests)
def test_data_window_is_the_overlap_of_the_permitting_consents_data_periods(ws, req) -> None:
    """Every consent permits the request, each for its own dataPeriod: the decision's window
    is their overlap (latest start, earliest end), and no overlap at all denies."""
    cs = [
        ConsentRecord(f"w{i}", req.patient, "active", Provision("permit", data_period=w))
        for i, w in enumerate(ws)
    ]
    d = decide(cs, req)
    starts = [w.start for w in ws if w.start is not None]
    ends = [w.end for w in ws if w.end is not None]
    start, end = (max(starts) if starts else None), (min(ends) if ends else None)
    event("disjoint" if start is not None and end is not None and end <= start else "overlap")
    if start is not None and end is not None and end <= start:
        assert not d.permit and not d.classes and "do not overlap" in d.reason
    else:
        assert d.permit and d.classes == req.classes
        assert d.data_period == Period(start, end)


def test_default_deny_with_no_consents() -> None:
    req = DecisionRequest("p1", "org-a", "org-b", "TREAT", frozenset({"Condition"}), T0)
    d = decide([], req)
    assert not d.permit and d.classes == frozenset()


def test_partial_permit_reports_refused_classes() -> None:
    c = ConsentRecord(
        "c1",
        "p1",
        "active",
        Provision(
            "permit",
            actors=frozenset({"clinic"}),
            purposes=frozenset({"TREAT"}),
            classes=frozenset({"Condition", "Observation", "Procedure"}),
            provisions=(Provision("deny", classes=frozenset({"Procedure"})),),
        ),
    )
    req = DecisionRequest(
        "p1", "hosp", "clinic", "TREAT", frozenset({"Condition", "Procedure", "Encounter"}), T0
    )
    d = decide([c], req)
    assert d.permit and d.classes == {"Condition"}
    assert d.refused_classes == {"Procedure", "Encounter"}
    assert "partial permit" in d.reason
    assert d.consent_ids == ("c1",)
    # other recipient and other purpose: refused
    assert not decide([c], replace(req, recipient="other")).permit
    assert not decide([c], replace(req, purpose="HRESCH")).permit


def test_etreat_is_not_granted_without_consent() -> None:
    treat_only = ConsentRecord(
        "c1", "p1", "active", Provision("permit", purposes=frozenset({"TREAT"}))
    )
    req = DecisionRequest("p1", "a", "b", "ETREAT", frozenset({"Condition"}), T0)
    assert not decide([treat_only], req).permit
    assert not decide([], req).permit


def test_data_period_is_reported_and_disjoint_periods_deny() -> None:
    a = ConsentRecord("a", "p1", "active", Provision("permit", data_period=Period(day(0), day(10))))
    b = ConsentRecord(
        "b",
        "p1",
        "active",
        Provision("permit", classes=frozenset({"Condition"}), data_period=Period(day(5), day(20))),
    )
    req = DecisionRequest("p1", "x", "y", "TREAT", frozenset({"Condition"}), day(1))
    d = decide([a, b], req)
    assert d.permit and d.data_period == Period(day(5), day(10))
    c = replace(b, provision=replace(b.provision, data_period=Period(day(11), day(20))))
    assert not decide([a, c], req).permit
