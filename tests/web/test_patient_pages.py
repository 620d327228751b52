"""The patient's pages on the shared real region, in Chromium at 360 px: one regional sign-in
(the consent registry's OpenID Connect login) → today's page; record a weight (stored at the
node, the patient as author); allow a clinic to see some records, share less, see who saw the
data; withdraw the consent — after which the hospital doctor's next referral is refused, shown
as such on the doctor's page; mark today's medication dose taken. Screenshots in both languages,
axe-core on every page, no page wider than 360 px."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from exchange_net import PASSWORD, Region

from .browser import HOSPITAL_ID, axe_serious, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PATIENT_PASSWORD = "a long patient password 7"


@pytest.fixture(scope="module")
def phone(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def wang_fang(region: Region) -> str:
    """The hospital's patient, enrolled at the registry (code from the node); their username."""
    hospital = region.nodes["hosp-a"]
    r = hospital.post("/consent/enrolment-code", {"patient": f"p-{HOSPITAL_ID}"})
    assert r.status_code == 201, r.text
    enrolled = httpx.post(
        f"{region.consent_url}/enrol",
        json={"code": r.json()["code"], "password": PATIENT_PASSWORD},
    )
    assert enrolled.status_code == 201, enrolled.text
    return str(enrolled.json()["username"])


def _check(page: Any, name: str) -> None:
    shot(page, name)
    assert axe_serious(page) == [], f"axe on {name}"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"{name} scrolls sideways at 360 px ({width} px)"


def _referral(region: Region) -> httpx.Response:
    return region.nodes["hosp-a"].post(
        "/exchange/requests",
        {"kind": "referral", "patient": f"p-{HOSPITAL_ID}", "recipient": "clinic-b",
         "reason": "community follow-up"},
    )  # fmt: skip


def test_patient_records_a_weight_and_withdraws_consent_then_referral_is_refused(
    region: Region, phone: Any, browser: Any, wang_fang: str
) -> None:
    hospital = region.nodes["hosp-a"]
    page = phone.new_page()
    page.goto(f"{hospital.url}/app/sign-in")
    _check(page, "sign-in")
    page.click("#patient-sign-in")  # → the registry's login page (the region's one login)
    page.fill("input[name=username]", wang_fang)
    page.fill("input[name=password]", PATIENT_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{hospital.url}/app/me")
    assert "Wang Fang" in page.content()
    _check(page, "patient-today")

    page.fill("#weight", "68.4")
    page.click("#record-weight")
    page.wait_for_selector("#notice")
    weights = hospital.search("Observation", patient=f"p-{HOSPITAL_ID}", code="29463-7")
    assert [w["valueQuantity"]["value"] for w in weights] == [68.4]

    # Allow the clinic to see conditions and observations for care.
    page.goto(f"{hospital.url}/app/me/consents")
    _check(page, "patient-consents")
    page.select_option("#org", "clinic-b")
    page.select_option("#purpose", "TREAT")
    page.check("form[action$='/grant'] input[value=Condition]")
    page.check("form[action$='/grant'] input[value=Observation]")
    page.click("form[action$='/grant'] button[type=submit]")
    page.wait_for_selector(".consent")
    assert _referral(region).status_code == 201  # the consent permits the referral

    # Share less: conditions only.
    page.uncheck(".consent form[action$='/narrow'] input[value=Observation]")
    page.click(".consent form[action$='/narrow'] button[type=submit]")
    page.wait_for_selector("#notice")
    text = page.locator(".consent p").first.inner_text()
    assert "Observation" not in text and ("诊断" in text or "Condition" in text)

    page.goto(f"{hospital.url}/app/me/disclosures")
    assert page.locator("#disclosures li").count() >= 1
    assert "clinic-b" in page.locator("#disclosures").inner_text()
    _check(page, "patient-disclosures")

    # Withdraw: the very next referral is refused.
    page.goto(f"{hospital.url}/app/me/consents")
    page.click(".consent form[action$='/revoke'] button")
    page.wait_for_selector("#notice")
    assert page.locator(".consent").count() == 0

    doctor = browser.new_context(viewport={"width": 1280, "height": 900})
    dpage = doctor.new_page()
    dpage.goto(f"{hospital.url}/app/sign-in")
    dpage.click("#staff-sign-in")  # → the node's own login page (authorization code + PKCE)
    dpage.fill("input[name=username]", "doctor")
    dpage.fill("input[name=password]", PASSWORD)
    dpage.click("button[type=submit]")
    dpage.wait_for_url("**/app/panel")
    dpage.goto(f"{hospital.url}/app/panel")
    # Wang Fang has no care plan at the hospital: reach her through the referral list.
    dpage.goto(f"{hospital.url}/app/referrals")
    dpage.get_by_role("link", name="Wang Fang").first.click()
    dpage.select_option("#recipient", "clinic-b")
    dpage.fill("#reason", "community follow-up")
    dpage.click("#refer")
    dpage.wait_for_selector("#notice")
    assert "拒绝" in dpage.locator("#notice").inner_text()  # refused: no consent
    doctor.close()
    assert _referral(region).status_code == 403

    # The patient pages in the other language; today's medication with its check-in form.
    made = hospital.post("/fhir/MedicationRequest", {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/p-{HOSPITAL_ID}"},
        "medicationCodeableConcept": {"text": "Metoprolol succinate 47.5 mg"},
        "dosageInstruction": [{"text": "once a day"}]})  # fmt: skip
    assert made.status_code == 201, made.text
    page.goto(f"{hospital.url}/app/me")
    page.get_by_role("button", name="English").click()
    page.wait_for_load_state()
    for path, name in (("/app/me", "patient-today"), ("/app/me/trends", "patient-trends"),
                       ("/app/me/consents", "patient-consents"),
                       ("/app/me/disclosures", "patient-disclosures"),
                       ("/app/me/medications", "patient-medications")):  # fmt: skip
        page.goto(f"{hospital.url}{path}")
        _check(page, name)
    page.goto(f"{hospital.url}/app/me/medications")
    page.get_by_role("button", name="I took this dose").click()
    page.wait_for_selector("#notice")
    assert page.locator(".dose-taken").count() == 1
    _check(page, "patient-medications")
    page.goto(f"{hospital.url}/app/me/trends")
    page.get_by_role("button", name="中文").click()
    page.wait_for_load_state()
    _check(page, "patient-trends")
    page.goto(f"{hospital.url}/app/me/medications")
    _check(page, "patient-medications")
    page.close()
