"""The doctor's break-glass pages (issue 16), in process: the real node app of
``node.app.create_app`` (SQLite in a temp dir) through FastAPI's TestClient, a doctor signed in
through ``/app/sign-in`` (the node's login page). A break-glass request (as
``node.exchange.workflow.new_request`` labels it) is marked as such on the referrals page, with
the stated reason, in both languages, and an ordinary one is not; the emergency POST without the
CSRF token is refused, and on a node without a coordinator it is a clear 503 with nothing
written. The crossing itself (registry grant, coordinator re-admission, import) is tested over
real processes in tests/exchange/test_auth_hardening.py and tests/web/test_doctor_pages.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deploy.demo.staff_sign_in import sign_in_staff
from node.app import create_app
from node.exchange.workflow import new_request
from node.settings import load_settings

PASSWORD = "a long doctor password 8"
PID = "p-break-glass-page"
STATED = "unconscious after a fall, anticoagulated?"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None
    return found.group(1)


@pytest.fixture(scope="module")
def doctor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("break-glass-pages")
    app = create_app(load_settings(folder / "node", org_id="org-bg", name="Break-glass clinic"))
    store = app.state.store
    store.update("Patient", PID, {"resourceType": "Patient", "id": PID,
                 "name": [{"family": "Zhou", "given": ["Min"]}]}, writer="test:seed")  # fmt: skip
    for reason in (STATED, None):
        sr, task = new_request(
            kind="referral", patient_id=PID, requester="org-bg", requester_name="BG clinic",
            performer="hosp-x", reason=reason or "routine review", break_glass_reason=reason,
        )  # fmt: skip
        store.update_many([sr, task], writer="test:seed")
    app.state.auth.accounts.add_user("dr-bg", PASSWORD, "doctor")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = sign_in_staff(client, "dr-bg", PASSWORD)
        assert r.status_code == 303, r.text
        client.app_ = app  # type: ignore[attr-defined]
        yield client


@pytest.mark.parametrize(
    ("lang", "badge", "reason_label"),
    [
        ("zh-CN", "紧急访问（破窗）", "给出的理由"),
        ("en", "Emergency access (break-glass)", "Reason given"),
    ],
)
def test_referrals_page_marks_the_break_glass_request_with_its_reason(
    doctor: TestClient, lang: str, badge: str, reason_label: str
) -> None:
    page = doctor.get("/app/referrals")
    r = doctor.post(
        "/app/language", data={"lang": lang, "csrf_token": _csrf(page.text)}, follow_redirects=True
    )
    assert r.status_code == 200
    r = doctor.get("/app/referrals")
    assert r.status_code == 200
    assert f'lang="{lang}"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    body = r.text.split("<tbody>", 1)[1]
    rows = re.findall(r"<tr(?: class=\"([^\"]*)\")?>\s*<td>", body)
    assert sorted(rows) == ["", "break-glass"]  # the emergency one marked, the routine one not
    flagged = body.split('<tr class="break-glass">', 1)[1].split("</tr>", 1)[0]
    assert badge in flagged and f"{reason_label}: {STATED}" in flagged
    assert body.count(badge) == 1 and body.count(STATED) == 1


def test_break_glass_post_needs_the_csrf_token_and_a_coordinator(doctor: TestClient) -> None:
    store = doctor.app_.state.store  # type: ignore[attr-defined]
    listing = doctor.get("/app/referrals").text
    handle = re.search(r'href="/app/patients/([^"]+)"', listing)
    assert handle is not None
    path = f"/app/patients/{handle.group(1)}"
    page = doctor.get(path)
    assert "break-glass-form" not in page.text  # no coordinator: no recipients, no form
    tasks_before = store.search("Task", []).total
    form = {"kind": "referral", "recipient": "hosp-x", "reason": STATED}
    refused = doctor.post(f"{path}/break-glass", data=form, follow_redirects=False)
    assert refused.status_code == 403
    unconnected = doctor.post(
        f"{path}/break-glass", data={**form, "csrf_token": _csrf(page.text)}, follow_redirects=False
    )
    assert unconnected.status_code == 503 and "coordinator" in unconnected.text
    assert store.search("Task", []).total == tasks_before
