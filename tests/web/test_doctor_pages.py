"""The doctor's pages on a real region (consent registry, coordinator, a hospital and a clinic
node with care on, each its own process), driven in Debian's Chromium: sign in; the panel; a
patient's journey with trends; a new alert appears in the open inbox without a reload (the SSE
stream) and is acknowledged with a mitigation (checked in the FHIR store); remote follow-up;
both languages, screenshots, axe-core. Security: a request without the CSRF token is refused
and changes nothing; a patient's session opens no doctor page and no other patient's record;
node A's session opens nothing at node B; the CSP header is on every page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from exchange_net import PASSWORD, Region

from deploy.demo.staff_sign_in import sign_in_staff

from .browser import HF_ID, axe_serious, csrf_of, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def _weight(pid: str, kg: float, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org",
                          "code": "kg"},
    }  # fmt: skip


def _sign_in(page: Any, url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/app/sign-in")
    page.click("#staff-sign-in")  # → the node's own login page (authorization code + PKCE)
    page.wait_for_url("**/auth/authorize?**")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def _check_page(page: Any, name: str, seen_csp: list[str]) -> None:
    shot(page, name)
    assert axe_serious(page) == [], f"axe on {name}"
    seen_csp.append(name)


def test_doctor_sees_a_new_alert_live_and_acknowledges_it(region: Region, context: Any) -> None:
    from playwright.sync_api import expect

    clinic = region.nodes["clinic-b"]
    page = context.new_page()
    documents: list[Any] = []
    page.on(
        "response", lambda r: documents.append(r) if r.request.resource_type == "document" else None
    )
    seen: list[str] = []

    _sign_in(page, clinic.url, "doctor")
    page.wait_for_url("**/app/panel")
    assert page.locator("html").get_attribute("lang") == "zh-CN"  # the region's default
    assert page.get_by_role("link", name="Li Mei").count() == 1
    _check_page(page, "doctor-panel", seen)

    page.get_by_role("link", name="Li Mei").click()
    page.wait_for_selector("#timeline li")
    assert "p-" not in page.url.split("/app/patients/")[1]  # an opaque handle, not the id
    assert page.locator(".badge.source").count() > 0
    _check_page(page, "doctor-patient", seen)

    page.goto(f"{clinic.url}/app/alerts")
    page.wait_for_selector("[data-sse-state=open]", state="attached", timeout=15_000)
    before = page.locator(".alert-item").count()
    page.evaluate("window.__noReload = true")
    now = datetime.now(UTC)
    pid = f"p-{HF_ID}"
    for day, kg in ((2, 70.0), (1, 71.2), (0, 72.5)):
        r = clinic.post("/fhir/Observation", _weight(pid, kg, now - timedelta(days=day, minutes=1)))
        assert r.status_code == 201, r.text
    started = time.monotonic()
    expect(page.locator(".alert-item")).to_have_count(before + 1, timeout=30_000)
    print(f"alert shown {time.monotonic() - started:.2f}s after the third weight")
    assert page.evaluate("window.__noReload") is True  # appeared without a reload
    _check_page(page, "doctor-alerts", seen)

    item = page.locator(".alert-item").first
    item.locator("input[name=text]").first.fill("Phoned patient; furosemide dose raised")
    item.get_by_role("button", name="确认").click()  # "Acknowledge" in zh-CN
    expect(page.locator(".alert-item")).to_have_count(before, timeout=15_000)
    issues = clinic.search("DetectedIssue", patient=pid)
    done = [i for i in issues if i.get("mitigation")]
    assert done and "furosemide" in done[0]["mitigation"][0]["action"]["text"]

    # The other language, then the remaining pages in both.
    page.goto(f"{clinic.url}/app/referrals")
    _check_page(page, "doctor-referrals", seen)
    page.get_by_role("button", name="English").click()
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "en"
    _check_page(page, "doctor-referrals", seen)
    for path, name in (("/app/panel", "doctor-panel"), ("/app/alerts", "doctor-alerts")):
        page.goto(f"{clinic.url}{path}")
        _check_page(page, name, seen)
    page.goto(f"{clinic.url}/app/panel")
    page.get_by_role("link", name="Li Mei").click()
    page.wait_for_selector("#timeline li")
    _check_page(page, "doctor-patient", seen)

    # One-click remote follow-up: a message, a task and a booked visit for the patient.
    page.click("#follow-up")
    page.wait_for_selector("#notice")
    assert any(a.get("status") == "booked" for a in clinic.search("Appointment", patient=pid))
    messages = clinic.search("Communication", patient=pid)
    assert any(c.get("category", [{}])[0].get("text") == "remote-follow-up" for c in messages)
    assert any(t.get("owner", {}).get("reference") == f"Patient/{pid}"
               for t in clinic.search("Task", patient=pid))  # fmt: skip

    for response in documents:
        if response.url.startswith(clinic.url + "/app"):
            csp = response.headers.get("content-security-policy", "")
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, response.url
    page.close()


def _http_sign_in(url: str, username: str, cookie: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    r = sign_in_staff(client, username, PASSWORD)
    assert r.status_code == 303, r.text
    assert client.cookies.get(cookie)
    panel = client.get("/app/")
    return client, csrf_of(client.get(panel.headers["location"]).text)


def test_a_request_without_the_csrf_token_is_refused_and_changes_nothing(region: Region) -> None:
    clinic = region.nodes["clinic-b"]
    client, token = _http_sign_in(clinic.url, "doctor", "ipjms_session_clinic-b")
    panel = client.get("/app/panel")
    handle = panel.text.split("/app/patients/")[1].split('"')[0]
    before = len(clinic.search("Appointment"))
    refused = client.post(f"/app/patients/{handle}/follow-up")
    assert refused.status_code == 403
    assert "content-security-policy" in refused.headers
    wrong = client.post(f"/app/patients/{handle}/follow-up", headers={"X-CSRF-Token": "x" * 43})
    assert wrong.status_code == 403
    assert len(clinic.search("Appointment")) == before
    done = client.post(f"/app/patients/{handle}/follow-up", headers={"X-CSRF-Token": token})
    assert done.status_code == 303
    assert len(clinic.search("Appointment")) == before + 1
    # The pages take no password any more (the node's login page does, and its answer is bound
    # to this session by the state): a password POSTed to the pages opens no session.
    fresh = httpx.post(
        f"{clinic.url}/app/sign-in", data={"username": "doctor", "password": PASSWORD}
    )
    assert fresh.status_code in (403, 405) and not fresh.cookies


def test_a_patient_session_opens_no_doctor_page_and_no_other_record(
    region: Region, context: Any
) -> None:
    clinic = region.nodes["clinic-b"]
    admin = httpx.post(
        f"{clinic.url}/auth/token",
        data={"grant_type": "password", "username": "admin", "password": PASSWORD},
    ).json()["access_token"]
    r = httpx.post(
        f"{clinic.url}/auth/accounts",
        json={"username": "li-mei", "password": PASSWORD, "role": "patient",
              "patient": f"p-{HF_ID}"},
        headers={"Authorization": f"Bearer {admin}"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    doctor, _ = _http_sign_in(clinic.url, "doctor", "ipjms_session_clinic-b")
    panel = doctor.get("/app/panel").text
    other_handle = panel.split("Zhao Lei")[0].rsplit("/app/patients/", 1)[1].split('"')[0]

    patient, _ = _http_sign_in(clinic.url, "li-mei", "ipjms_session_clinic-b")
    me = patient.get("/app/me")
    assert me.status_code == 200 and "content-security-policy" in me.headers
    for path in ("/app/panel", "/app/alerts", "/app/referrals", "/app/alerts/stream",
                 f"/app/patients/{other_handle}"):  # fmt: skip
        r = patient.get(path)
        assert r.status_code == 403, (path, r.status_code)
    # A handle made in one doctor session means nothing in another session.
    second, _ = _http_sign_in(clinic.url, "doctor", "ipjms_session_clinic-b")
    assert second.get(f"/app/patients/{other_handle}").status_code == 404

    page = context.new_page()
    _sign_in(page, clinic.url, "li-mei")
    page.wait_for_url("**/app/me")
    seen: list[str] = []
    _check_page(page, "patient-today", seen)
    page.goto(f"{clinic.url}/app/me/trends")
    _check_page(page, "patient-trends", seen)
    response = page.goto(f"{clinic.url}/app/panel")
    assert response is not None and response.status == 403
    page.close()


def test_node_a_sessions_open_nothing_at_node_b(region: Region) -> None:
    hosp, clinic = region.nodes["hosp-a"], region.nodes["clinic-b"]
    a_client, _ = _http_sign_in(hosp.url, "doctor", "ipjms_session_hosp-a")
    a_session = a_client.cookies.get("ipjms_session_hosp-a")
    assert a_client.get("/app/panel").status_code == 200
    for name in ("ipjms_session_hosp-a", "ipjms_session_clinic-b"):
        r = httpx.get(f"{clinic.url}/app/panel", cookies={name: a_session})
        assert r.status_code == 303 and r.headers["location"].endswith("/app/sign-in")
    # … and node A's access token is not a token at node B either.
    token = hosp.headers()["Authorization"]
    r = httpx.get(f"{clinic.url}/fhir/Patient", headers={"Authorization": token})
    assert r.status_code == 401


def test_sign_out_ends_the_session(region: Region) -> None:
    clinic = region.nodes["clinic-b"]
    client, token = _http_sign_in(clinic.url, "doctor", "ipjms_session_clinic-b")
    assert client.get("/app/panel").status_code == 200
    assert client.post("/app/sign-out", headers={"X-CSRF-Token": token}).status_code == 303
    r = client.get("/app/panel")
    assert r.status_code == 303 and r.headers["location"].endswith("/app/sign-in")


def test_break_glass_from_the_patient_page_crosses_and_is_shown_as_such(region: Region) -> None:
    """The patient page's emergency-access form (issue 16): without the CSRF token refused;
    without a stated reason the registry refuses and nothing is sealed; with one the referral
    crosses to the hospital (Li Mei has no consent for it) and both sides' referral pages mark
    it break-glass with the reason."""
    import re

    from exchange_net import wait_for

    clinic, hospital = region.nodes["clinic-b"], region.nodes["hosp-a"]
    client, token = _http_sign_in(clinic.url, "doctor", "ipjms_session_clinic-b")
    panel = client.get("/app/panel").text
    handle = re.search(r'href="/app/patients/([^"]+)"[^>]*>Li Mei<', panel)
    assert handle is not None
    path = f"/app/patients/{handle.group(1)}"
    page = client.get(path).text
    assert 'id="break-glass-form"' in page and 'value="hosp-a"' in page
    stated = "collapsed at the market, unresponsive; needs her history now"
    form = {"kind": "referral", "recipient": "hosp-a"}
    sealed_before = len(clinic.get("/exchange/outbox")["envelopes"])
    assert client.post(f"{path}/break-glass", data={**form, "reason": stated}).status_code == 403
    blank = client.post(f"{path}/break-glass", data={**form, "reason": " ", "csrf_token": token})
    assert blank.status_code == 303 and blank.headers["location"].endswith("break-glass-invalid")
    assert len(clinic.get("/exchange/outbox")["envelopes"]) == sealed_before
    sent = client.post(f"{path}/break-glass", data={**form, "reason": stated, "csrf_token": token})
    assert sent.status_code == 303 and sent.headers["location"].endswith("notice=break-glass")
    assert "紧急访问（破窗）已发送" in client.get(sent.headers["location"]).text
    outbox = clinic.get("/exchange/outbox")["envelopes"]
    assert len(outbox) == sealed_before + 1 and outbox[0]["state"] == "sent"
    envelope_id = outbox[0]["envelope_id"]
    wait_for(
        lambda: any(
            e["envelope_id"] == envelope_id and e["outcome"] == "imported"
            for e in hospital.get("/exchange/inbox")["envelopes"]
        ),
        what="the hospital imports the break-glass referral",
    )
    doctor_a, _ = _http_sign_in(hospital.url, "doctor", "ipjms_session_hosp-a")
    for node, session in ((clinic, client), (hospital, doctor_a)):
        row = session.get("/app/referrals").text.split('<tr class="break-glass">', 1)
        tasks = [(t.get("meta"), t.get("priority")) for t in node.search("Task", _count="50")]
        assert len(row) == 2, f"no break-glass row at {node.org_id}: {tasks}"
        assert "紧急访问（破窗）" in row[1].split("</tr>")[0] and stated in row[1]


PULL_STATED = "found unconscious at home; allergies and medication unknown"


def test_break_glass_pull_from_the_patient_page_is_flagged_on_both_sides_and_to_the_patient(
    region: Region, browser: Any
) -> None:
    """The patient page's emergency pull (issue 16): the hospital also holds Li Mei; in
    Chromium at 360 px the clinic's doctor asks without a reason — refused, said so, nothing
    sent — then with one: the hospital answers under the registry's break-glass grant and the
    clinic imports the history. The clinic's referrals page lists the records received under
    break-glass, the hospital's the query it answered with the clinician and the reason; Li
    Mei's "who saw my data" page (her regional sign-in) shows the pull flagged, with the reason.
    axe on each page, no sideways scrolling at 360 px, the CSP on every page."""
    from exchange_net import patient_bundle, seed, wait_for

    clinic, hospital = region.nodes["clinic-b"], region.nodes["hosp-a"]
    seed(hospital, patient_bundle(HF_ID, name="Li Mei"))  # the hospital's own record of her
    assert hospital.post("/exchange/publish", {}).status_code == 200
    pid = f"p-{HF_ID}"
    ctx = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = ctx.new_page()
    documents: list[Any] = []
    page.on("response", lambda r: documents.append(r) if r.request.resource_type == "document"
            else None)  # fmt: skip

    def check(name: str) -> None:
        shot(page, name)
        assert axe_serious(page) == [], f"axe on {name}"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{name} scrolls sideways at 360 px ({width} px)"

    # a SMART app registered for launch from the pages: its button is on the page too
    import os
    import subprocess

    from deploy.launcher import ipjms_command

    subprocess.run(
        ipjms_command("node", "app", "add", "--data-dir", str(clinic.data_dir), "--client-id",
                      "chart-360", "--redirect-uri", "http://127.0.0.1:9/cb", "--name",
                      "Chart", "--launch-url", "http://127.0.0.1:9/launch"),
        check=True, capture_output=True, env={**os.environ, **clinic.env}, timeout=120,
    )  # fmt: skip
    _sign_in(page, clinic.url, "doctor")
    page.wait_for_url("**/app/panel")
    page.get_by_role("link", name="Li Mei").click()
    page.wait_for_selector("#break-glass-pull-form")
    assert page.locator("#launch-form option[value=chart-360]").count() == 1
    check("doctor-patient-360")
    sent_before = len(clinic.get("/exchange/outbox")["envelopes"])
    page.click("#break-glass-pull")  # no reason given
    page.wait_for_selector("#notice")
    assert "破窗调阅需要说明理由" in page.locator("#notice").inner_text()
    assert len(clinic.get("/exchange/outbox")["envelopes"]) == sent_before  # nothing sent
    page.fill("#bgp-reason", PULL_STATED)
    page.click("#break-glass-pull")
    page.wait_for_selector("#notice")
    assert "已破窗调阅病史" in page.locator("#notice").inner_text()
    wait_for(
        lambda: any(
            e["sender"] == "hosp-a" and e["kind"] == "record-answer"
            and e["outcome"] == "imported" and e["detail"].startswith("break-glass")
            for e in clinic.get("/exchange/inbox")["envelopes"]
        ),
        what="the clinic imports the hospital's break-glass answer",
    )  # fmt: skip
    page.goto(f"{clinic.url}/app/referrals")
    received = page.locator("#break-glass-pulls li[data-kind=record-answer]").first.inner_text()
    assert "hosp-a" in received and "Li Mei" in received and "紧急访问（破窗）" in received
    check("doctor-referrals-pulls-360")
    doctor_a, _ = _http_sign_in(hospital.url, "doctor", "ipjms_session_hosp-a")
    answered = doctor_a.get("/app/referrals").text.split('data-kind="record-query"', 1)
    assert len(answered) == 2, "no break-glass query listed at the hospital"
    item = answered[1].split("</li>", 1)[0]
    assert "clinic-b" in item and PULL_STATED in item and "Li Mei" in item

    # Li Mei signs in with the region's one login and sees the pull, flagged, with the reason.
    code = clinic.post("/consent/enrolment-code", {"patient": pid})
    assert code.status_code == 201, code.text
    password = "li mei's long password 9"
    enrolled = httpx.post(f"{region.consent_url}/enrol",
                          json={"code": code.json()["code"], "password": password})  # fmt: skip
    assert enrolled.status_code == 201, enrolled.text
    ctx.clear_cookies()  # a fresh browser session for the patient
    page.goto(f"{clinic.url}/app/sign-in")
    page.click("#patient-sign-in")
    page.fill("input[name=username]", str(enrolled.json()["username"]))
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{clinic.url}/app/me")
    page.goto(f"{clinic.url}/app/me/disclosures")
    flagged = page.locator("#disclosures li.break-glass").all_inner_texts()
    assert any("clinic-b" in t and PULL_STATED in t for t in flagged), flagged
    assert any("hosp-a" in t and PULL_STATED in t for t in flagged), flagged
    check("patient-disclosures-break-glass-pull")
    for response in documents:
        if "/app" in response.url and response.status < 400:
            assert "script-src 'self'" in response.headers.get("content-security-policy", "")
    ctx.close()
