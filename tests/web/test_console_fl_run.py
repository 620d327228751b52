"""The analyst's journey in Chromium (issue 16, must-show 1): sign in to the authority console,
start a federated training run (ε, rounds) from the runs page, watch it on the runs page until it
is done, and open its model card — on a real federated network: the federated tests' region
(consent registry, coordinator, three nodes with seeded synthetic patients and research
consents), the authority's SuperLink and one SuperNode per node, each its own process
(tests/federated/fl_net.py; the network the federated tests share, tests/conftest.py). The
coordinator is restarted with the console settings (``--console-federated-dir`` etc.) so its form
starts ``ipjms fl run`` for real; its federated folder is the SuperLink's Flower configuration
with a runs folder of the console's own (runs of the other modules on the shared SuperLink are
not the console's), so the runs page starts empty. The smallest honest run: 1 round at ε 1.
The per-node budget table is checked against each SuperNode's own ledger. Both languages,
screenshots, axe-core, the CSP on every page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.launcher import ipjms_command

from .browser import axe_serious, shot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "federated"))

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1500)]
ANALYST_PASSWORD = "analyst password 42"
SUPERNODE_BUDGET = 100.0  # fl_net.start_supernode's --epsilon-budget


def _console_dir(net: Any) -> Path:
    """The console's federated folder: the SuperLink's Flower configuration (``flwr``, linked)
    and a ``runs`` folder of its own."""
    return Path(net.root) / "console-federated"


@pytest.fixture(scope="module")
def fl(shared_fl_net: Any) -> Any:
    net = shared_fl_net.get()
    folder = _console_dir(net)
    if not folder.exists():  # once per network: the coordinator keeps these settings
        folder.mkdir()
        (folder / "flwr").symlink_to(net.superlink_dir / "flwr", target_is_directory=True)
        coordinator = net.region.coordinator
        coordinator.service.stop()
        coordinator.args += [
            "--console-federated-dir", str(folder),
            "--console-authority-dir", str(net.pki.org_dirs["authority"]),
            "--console-registry-url", coordinator.http_url,
        ]  # fmt: skip
        coordinator.restart()
        r = subprocess.run(
            ipjms_command("coordinator", "analyst-add", "--data-dir", str(coordinator.data_dir),
                          "--username", "analyst"),
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "IPJMS_ANALYST_PASSWORD": ANALYST_PASSWORD},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    net.use_supernodes_under(None)  # every node's SuperNode up with the default policy
    net.ensure_supernodes(("hosp-a", "clinic-b", "clinic-c"))
    return net


def _ledger_spent(net: Any, org: str) -> float:
    from federated.client_app import ledger_for

    ledger = ledger_for({"data-dir": str(net.supernode_dir(org)),
                         "epsilon-budget": SUPERNODE_BUDGET})  # fmt: skip
    try:
        return ledger.used()
    finally:
        ledger.engine.dispose()


def test_analyst_starts_a_run_and_opens_its_model_card(fl: Any, browser: Any) -> None:
    url = fl.region.coordinator.http_url
    refused = httpx.post(f"{url}/console/runs", data={"epsilon": "1", "rounds": "1"},
                         follow_redirects=False)  # fmt: skip
    assert refused.status_code in (303, 403)  # no session, no token: nothing started
    assert not (_console_dir(fl) / "runs").exists() or not list(
        (_console_dir(fl) / "runs").glob("console-*")
    )

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    documents: list[Any] = []
    page.on("response", lambda r: documents.append(r) if r.request.resource_type == "document"
            else None)  # fmt: skip
    page.goto(f"{url}/console/sign-in")
    page.fill("#username", "analyst")
    page.fill("#password", ANALYST_PASSWORD)
    page.click("form.stack button[type=submit]")
    page.wait_for_url(f"{url}/console/network")

    page.goto(f"{url}/console/runs")
    assert page.locator("#no-training-runs").count() == 1
    assert axe_serious(page) == [], "axe on the runs page (form)"
    page.fill("#epsilon", "1")
    page.fill("#rounds", "1")
    page.click("#start-run button[type=submit]")
    page.wait_for_url(f"{url}/console/runs")
    run = page.locator(".run").first
    label = run.get_attribute("data-run")
    assert label and label.startswith("console-")
    assert "ε 1" in run.inner_text()

    deadline = time.monotonic() + 1200
    status = ""
    while time.monotonic() < deadline:
        page.goto(f"{url}/console/runs")
        status = page.locator(f'.run[data-run="{label}"] .status').get_attribute("class") or ""
        if "status-running" not in status:
            break
        page.wait_for_timeout(3000)  # a browser-side poll interval, not an assertion on time
    card_text = page.locator(f'.run[data-run="{label}"]').text_content() or ""
    assert "status-done" in status, card_text
    assert "round 1/1" in card_text  # the rounds' progress lines from the SuperLink's run log

    # each node's budget: what its own ledger says (the SuperNode's SQLite), spent > 0
    rows = page.locator("#node-budgets tbody tr")
    assert rows.count() == 3
    for org in ("hosp-a", "clinic-b", "clinic-c"):
        spent = _ledger_spent(fl, org)
        row = page.locator(f'#node-budgets tr[data-org="{org}"]')
        assert spent > 0 and row.locator(".eps-spent").inner_text() == f"{spent:.2f}"
        assert (
            row.locator(".eps-remaining").inner_text().startswith(f"{SUPERNODE_BUDGET - spent:.2f}")
        )

    link = page.locator(f'.run[data-run="{label}"] a[href*="/console/models#model-"]')
    model_id = re.sub(r".*#model-", "", link.get_attribute("href") or "")
    assert model_id
    for lang in ("zh-CN", "en"):
        if lang == "en":
            page.get_by_role("button", name="English").click()
            page.wait_for_load_state()
            page.goto(f"{url}/console/runs")
        shot(page, "console-runs")
        assert axe_serious(page) == [], "axe on the runs page with a run"
        page.locator(f'.run[data-run="{label}"] a[href*="/console/models#model-"]').click()
        page.wait_for_url(re.compile(r".*/console/models#model-.*"))
        card = page.locator(f"#model-{model_id}")
        assert card.count() == 1
        card.locator("summary").click()
        text = card.locator("pre").inner_text()
        assert '"target_epsilon_per_node": 1.0' in text and '"rounds": 1' in text
        shot(page, "console-model-card")
        assert axe_serious(page) == [], "axe on the models page"
    for response in documents:
        assert "script-src 'self'" in response.headers.get("content-security-policy", "")
    ctx.close()
