"""Browser fixtures: Playwright driving Debian's Chromium (``/usr/bin/chromium``; CI installs it
in ``.ci/run``). Without the ``playwright`` package or the browser the tests skip, saying which
is missing. Screenshots go to ``tests/web/screenshots/`` (git-ignored); axe-core (bundled by
``axe-playwright-python``) checks every page for serious and critical violations."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .browser import HF_ID, HOSPITAL_ID, OTHER_ID

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exchange"))

CARE = {
    "IPJMS_NODE_CARE_ENABLED": "true",
    "IPJMS_NODE_CARE_RESPONSIBLE_USER": "doctor",
    "IPJMS_NODE_CARE_TICK_SECONDS": "3600",
}
CHROMIUM = Path(os.environ.get("IPJMS_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).parent / "screenshots"


# Per module, not per session: while sync_playwright() is open its event loop runs in this
# thread, and every later asyncio.run() in the same xdist worker would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or IPJMS_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real region for every browser test: consent registry, coordinator, a hospital and a
    clinic node (care on), each its own process; nodes trust the registry's patient tokens
    (its key pinned)."""
    from exchange_net import ORGS, patient_bundle, seed, start_region, wait_for

    from trust.pki import init_ca, issue_org
    from trust.tokens import jwk_thumbprint, load_or_create_signing_key

    root = tmp_path_factory.mktemp("web-region")
    ca_dir = root / "ca"
    init_ca(ca_dir)
    org_dirs = {o: root / "orgs" / o for o in ORGS}
    creds = {o: issue_org(ca_dir, o, out_dir=org_dirs[o]) for o in ORGS}
    pki = SimpleNamespace(ca_dir=ca_dir, org_dirs=org_dirs, creds=creds)
    # The registry's token key, made before it starts (it loads it), so nodes can pin it.
    key = load_or_create_signing_key(root / "consent" / "keys" / "access-token.pem")
    pins = {"IPJMS_NODE_CONSENT__PATIENT_KEY_PINS": json.dumps([jwk_thumbprint(key.public_jwk())])}
    net = start_region(
        pki,
        root,
        nodes=(("hosp-a", "tertiary"), ("clinic-b", "community")),
        node_env={"hosp-a": pins, "clinic-b": {**CARE, **pins}},
    )
    try:
        clinic, hospital = net.nodes["clinic-b"], net.nodes["hosp-a"]
        seed(clinic, patient_bundle(HF_ID, name="Li Mei"))
        seed(clinic, patient_bundle(OTHER_ID, name="Zhao Lei"))
        seed(hospital, patient_bundle(HOSPITAL_ID, name="Wang Fang"))
        wait_for(lambda: len(clinic.search("CarePlan", status="active")) >= 2, 180, "enrolment")
        yield net
    finally:
        net.stop()
