"""Properties of the engine: quiet inside every threshold, one alert per episode, purity."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.care.engine import AlertDecision, evaluate

from .fixtures import LOCAL_MEASURE, at, bp, cat, feed, obs, plan_for, weight

PURE_MODULES = [
    "engine",
    "rules",
    "control",
    "measures",
    "expressions",
    "timing",
    "apply",
    "revision",
    "alerts",
    "enrolment",
    "model_gate",
]
CARE = Path(__file__).resolve().parents[2] / "node" / "care"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def in_range_day(draw, day: int):
    """One day of home data strictly inside every alert threshold of every pathway."""
    when = at(day, draw(st.floats(0, 20)))
    return [
        bp(draw(st.integers(91, 134)), draw(st.integers(50, 84)), when),
        obs("8867-4", draw(st.integers(41, 130)), "/min", when),
        obs("59408-5", draw(st.integers(92, 100)), "%", when),
        obs("15074-8", draw(st.floats(3.9, 15.0)), "mmol/L", when),
        obs("44260-8", 0, None, when),
        obs("lace-index", draw(st.integers(0, 9)), None, when, system=LOCAL_MEASURE),
    ]


@SETTINGS
@given(days=st.integers(1, 8), data=st.data())
def test_readings_inside_every_threshold_never_alert(days, data):
    resources = []
    base_weight = data.draw(st.floats(50, 120))
    base_cat = data.draw(st.integers(0, 7))
    for d in range(days):
        resources += data.draw(in_range_day(d))
        # weight wanders at most 0.6 kg a day around its start: never > 2 kg within 3 days
        resources.append(weight(base_weight + data.draw(st.floats(-0.6, 0.6)), at(d, 21)))
        resources.append(cat(base_cat + data.draw(st.integers(0, 1)), at(d, 22)))
    for key in ("hypertension", "type-2-diabetes", "copd", "heart-failure"):
        assert feed(plan_for(key), resources) == [], key


@SETTINGS
@given(
    n=st.integers(2, 12),
    systolic=st.lists(st.integers(180, 299), min_size=12, max_size=12),
)
def test_one_episode_opens_exactly_one_alert(n, systolic):
    """However many urgent readings an episode brings, while its alert is open no second one."""
    readings = [bp(s, 100, at(0, i)) for i, s in zip(range(n), systolic, strict=False)]
    alerts = feed(plan_for("hypertension"), readings)
    urgent = [a for a in alerts if a.rule.id == "htn-bp-urgent"]
    assert len(urgent) == 1
    assert len({a.rule.id for a in alerts}) == len(alerts)  # no rule twice


@SETTINGS
@given(gains=st.lists(st.floats(0.8, 2.0), min_size=3, max_size=10))
def test_one_rising_weight_episode_opens_exactly_one_hf_alert(gains):
    value, resources = 70.0, [weight(70.0, at(0))]
    for i, g in enumerate(gains, start=1):
        value += g
        resources.append(weight(value, at(i)))
    alerts = [
        a for a in feed(plan_for("heart-failure"), resources) if a.rule.id == "hf-weight-gain-3d"
    ]
    assert len(alerts) == 1


@SETTINGS
@given(s=st.integers(60, 250), d=st.integers(40, 140), prior=st.integers(60, 250))
def test_same_inputs_give_same_outputs_and_inputs_are_not_touched(s, d, prior):
    plan = plan_for("hypertension")
    new, recent = [bp(s, d, at(1))], [bp(prior, 80, at(0))]
    frozen = copy.deepcopy((new, recent))
    first = evaluate(plan, new, recent, set(), at(1, 1))
    second = evaluate(plan, new, recent, set(), at(1, 1))
    assert first == second
    assert (new, recent) == frozen
    assert all(isinstance(x, AlertDecision) or x.status for x in first)


IO_MODULES = {
    *("os", "io", "pathlib", "socket", "ssl", "sqlite3", "subprocess", "asyncio", "time"),
    *("random", "urllib", "http", "httpx", "requests", "sqlalchemy", "fastapi", "logging"),
    *("threading", "servicekit", "node.store", "node.api", "node.care.definitions"),
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((CARE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []  # type-only imports are not executed
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_pure_core_imports_no_io_module_and_reads_no_clock():
    for module in PURE_MODULES:
        bad = {
            name
            for name in _imports(module)
            if any(name == io or name.startswith(io + ".") for io in IO_MODULES)
        }
        assert not bad, f"node/care/{module}.py imports {sorted(bad)}"
        text = (CARE / f"{module}.py").read_text()
        for call in ("datetime.now(", ".utcnow(", "open(", "time.time(", "print("):
            assert call not in text, f"node/care/{module}.py calls {call}"


def test_importing_the_engine_loads_no_io_library():
    code = (
        "import sys, node.care.engine, node.care.apply, node.care.revision, node.care.alerts;"
        "bad = {'socket', 'ssl', 'sqlite3', 'sqlalchemy', 'httpx', 'http.client', 'asyncio',"
        " 'subprocess', 'node.store', 'servicekit', 'fastapi'};"
        "print(sorted(m for m in sys.modules if m in bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
