"""The node's risk-model gate reading real cards from the coordinator's model registry
(node/care/model_cards.py over the coordinator's HTTP app): the card is fetched as the node's
organisation, checked against the wire contract and judged by the pure gate; a weak model, an
unpublished one, an unknown one and an unreachable registry are all not for clinical use."""

from __future__ import annotations

import copy

import httpx
import pytest
from registry_app import BASE, Registry
from test_registry_router import _upload

from node.care.model_cards import RegistryGate
from node.care.model_gate import ModelFloor

pytestmark = pytest.mark.usefixtures("registry")
FLOOR = ModelFloor(0.70, 100)


def _publish(reg: Registry, auroc: float, events: int | None, *, published: bool = True) -> str:
    body = _upload(published=published)
    card = copy.deepcopy(body["card"])
    card["evaluation"]["auroc"] = auroc
    if events is not None:
        card["evaluation"]["events"] = events
    r = reg.post("org-authority", "/models", {**body, "card": card})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _gate(reg: Registry, org: str = "org-clinic") -> RegistryGate:
    return RegistryGate(BASE, FLOOR, reg.pki.org_dirs[org], http=reg.client)


def test_registry_cards_decide_clinical_use(registry: Registry) -> None:
    good = _publish(registry, 0.78, 240)
    weak = _publish(registry, 0.31, 240)
    silent = _publish(registry, 0.90, None)  # a card from before events were counted
    hidden = _publish(registry, 0.90, 500, published=False)
    gate = _gate(registry)
    assert gate.verdict(good).clinical_use, gate.verdict(good).reason
    assert "AUROC 0.31 is below the floor" in gate.verdict(weak).reason
    assert "no count of outcome events" in gate.verdict(silent).reason
    for unseen in (hidden, "m-does-not-exist"):
        v = gate.verdict(unseen)
        assert not v.clinical_use and "no model card" in v.reason, v.reason
    assert not gate.verdict("../models").clinical_use  # quoted into one path segment: refused
    # the verdict is reused: the registry is asked once per model per ttl
    assert gate.verdict(good) is gate.verdict(good)


def test_no_registry_or_unreachable_is_not_for_clinical_use(registry: Registry) -> None:
    good = _publish(registry, 0.78, 240)
    assert "no model registry configured" in RegistryGate(None, FLOOR, None).verdict(good).reason
    no_creds = RegistryGate(BASE, FLOOR, None, http=registry.client).verdict(good)
    assert "credentials could not be loaded" in no_creds.reason
    down = RegistryGate(
        "http://127.0.0.1:9", FLOOR, registry.pki.org_dirs["org-clinic"],
        http=httpx.Client(timeout=2),
    )  # fmt: skip
    v = down.verdict(good)
    assert not v.clinical_use and "could not be reached" in v.reason, v.reason
