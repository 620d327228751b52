"""The console's model registry says which models may raise alerts (issue 16): each model's
card against the region's default alerting floor (``protos.alerting_floor``, the rule each
node's gate applies with its own floor), the figures against the thresholds, published or not,
and that a node may set a stricter floor — in Chinese and English, CSP on the page. Through the
coordinator's real HTTP app (``create_status_app``, console mounted) over its migrated database;
an analyst signs in through the console's form with its CSRF token."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from registry_app import Registry

from coordinator.console.analysts import AnalystAccounts
from coordinator.model_registry.store import ModelStore
from node.care import model_gate
from node.settings import CareSettings
from protos import alerting_floor
from protos.alerting_floor import REGION_FLOOR, assess, gate

PASSWORD = "analyst password 42"


def _card(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {"task": "readmission-30d", "feature_spec": "readmission-30d@1", "rounds": 3,
            "strategy": "FedAvg", "participants": [{"org": "org-tertiary",
            "cohort_size_rounded": 300, "epsilon": 3.0, "delta": 1e-5}],
            "evaluation": evaluation}  # fmt: skip


def test_the_node_gate_and_its_defaults_are_the_shared_rule() -> None:
    assert model_gate.gate is gate and model_gate.ModelFloor is alerting_floor.ModelFloor
    care = CareSettings()
    assert (
        (care.model_min_auroc, care.model_min_events)
        == (
            REGION_FLOOR.min_auroc,
            REGION_FLOOR.min_events,
        )
        == (0.70, 100)
    )


def test_assess_gives_the_figures_and_agrees_with_the_gate() -> None:
    for evaluation, meets, missing in [
        ({"auroc": 0.71, "events": 240}, True, None),
        ({"auroc": 0.70, "events": 100}, True, None),
        ({"auroc": 0.69, "events": 240}, False, None),
        ({"auroc": 0.90, "events": 90}, False, None),
        ({"auroc": None, "events": 240}, False, "auroc"),
        ({"auroc": 0.90}, False, "events"),
    ]:
        check = assess({"evaluation": evaluation}, REGION_FLOOR)
        assert (check.meets, check.missing) == (meets, missing), evaluation
        assert gate("m", {"evaluation": evaluation}, REGION_FLOOR).clinical_use == meets
    assert assess(None, REGION_FLOOR).missing == "card"


def _signed_in(registry: Registry, tmp_path: Any) -> Any:
    AnalystAccounts(tmp_path / "coordinator").add("analyst", PASSWORD)
    client = registry.client
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/sign-in").text)
    assert token
    r = client.post("/console/sign-in", data={"username": "analyst", "password": PASSWORD,
                    "csrf_token": token.group(1)}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    return client


def _model(html: str, model_id: str) -> str:
    block = html[html.index(f'id="model-{model_id}"') :]
    return " ".join(block.split("<details>", 1)[0].split())


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("zh-CN", {"may": "可触发预警", "below": "未达到本地区默认预警门槛",
                   "unpublished": "未发布",
                   "unsaid": "模型卡信息不足", "stricter": "各节点可设定更严格的门槛",
                   "auroc": "联邦 AUROC", "events": "结局事件", "not_met": "未达到",
                   "not_reported": "未报告"}),
        ("en", {"may": "May raise alerts", "below": "below the region's default alerting floor",
                "unpublished": "not published", "unsaid": "does not say enough",
                "stricter": "Each node may set a stricter floor", "auroc": "Federated AUROC",
                "events": "Outcome events", "not_met": "not met",
                "not_reported": "not reported"}),
    ],
)  # fmt: skip
def test_the_models_page_says_which_models_may_raise_alerts_and_why(
    registry: Registry, tmp_path: Any, lang: str, words: dict[str, str]
) -> None:
    store = ModelStore(registry.engine)
    good = store.add(_card({"auroc": 0.74, "events": 240}), {}, created_by="t", published=True)
    weak = store.add(_card({"auroc": 0.62, "events": 300}), {}, created_by="t", published=True)
    few = store.add(_card({"auroc": 0.81, "events": 60}), {}, created_by="t", published=True)
    hidden = store.add(_card({"auroc": 0.74, "events": 240}), {}, created_by="t", published=False)
    unsaid = store.add(_card({"auroc": 0.74}), {}, created_by="t", published=True)
    client = _signed_in(registry, tmp_path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/models").text)
    assert token
    client.post("/console/language", data={"lang": lang, "next": "/console/models",
                "csrf_token": token.group(1)})  # fmt: skip
    r = client.get("/console/models")
    assert r.status_code == 200 and f'lang="{lang}"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = unescape(r.text)
    floor_note = " ".join(html[html.index('id="alerting-floor"') :].split("</div>", 1)[0].split())
    assert "0.70" in floor_note and "100" in floor_note and words["stricter"] in floor_note
    assert "Hosmer" in floor_note and "Collins" in floor_note  # each threshold's source
    alerting = dict(re.findall(r'id="model-([^"]+)" data-alerting="(yes|no)"', html))
    assert alerting == {good.id: "yes", weak.id: "no", few.id: "no", hidden.id: "no",
                        unsaid.id: "no"}  # fmt: skip
    g = _model(html, good.id)
    assert words["may"] in g and "0.74" in g and "240" in g and words["not_met"] not in g
    w = _model(html, weak.id)
    assert words["below"] in w and f"{words['auroc']}: 0.62" in w and "0.70" in w
    assert f"0.70 · {words['not_met']}" in w  # the AUROC figure, its floor, not met
    f = _model(html, few.id)
    assert words["below"] in f and f"{words['events']}: 60" in f
    assert f"100 · {words['not_met']}" in f
    assert words["unpublished"] in _model(html, hidden.id)
    assert words["may"] not in _model(html, hidden.id)
    u = _model(html, unsaid.id)
    assert words["unsaid"] in u and f"{words['events']}: {words['not_reported']}" in u
