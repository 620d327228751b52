"""Starting a federated training run from the console (issue 16): the form's checks (ε in
(0, 10], rounds 1–20) answer 400 with the reason and start nothing; a POST without the CSRF
token is refused (403) and starts nothing; nor does one without an analyst session, nor one
on a coordinator not configured to start runs (409). The runs page reads the SuperLink's run
files: done with a link to the model card, failed with its reason, the rounds' progress lines.
No real training starts here (tests/web and the demo run ``ipjms fl run``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from console_client import _client, _csrf
from fastapi.testclient import TestClient

from coordinator.console.fl_runs import RunRequest, RunRequestError, parse_run_request


def test_parse_run_request() -> None:
    assert parse_run_request("3", "5") == RunRequest(3.0, 5)
    assert parse_run_request(" 10 ", "20") == RunRequest(10.0, 20)
    assert parse_run_request("0.01", "1") == RunRequest(0.01, 1)
    for eps, rounds, message in [
        ("0", "5", "ε must be greater than 0 and at most 10"),
        ("-1", "5", "ε must be greater than 0 and at most 10"),
        ("10.5", "5", "ε must be greater than 0 and at most 10"),
        ("nan", "5", "ε must be greater than 0 and at most 10"),
        ("inf", "5", "ε must be greater than 0 and at most 10"),
        ("abc", "5", "ε must be a number"),
        ("", "5", "ε must be a number"),
        ("3", "0", "rounds must be between 1 and 20"),
        ("3", "21", "rounds must be between 1 and 20"),
        ("3", "2.5", "rounds must be a whole number"),
        ("3", "-1", "rounds must be a whole number"),
    ]:
        with pytest.raises(RunRequestError) as err:
            parse_run_request(eps, rounds)
        assert str(err.value) == message, (eps, rounds)


@pytest.fixture()
def configured(tmp_path: Path) -> TestClient:
    return _client(
        tmp_path,
        tmp_path / "superlink",
        authority_dir=tmp_path / "authority",
        registry_url="http://127.0.0.1:9",
    )


def _nothing_started(client: TestClient, tmp_path: Path) -> None:
    assert client.app.state.fl_runs.started == {}  # type: ignore[attr-defined]
    assert not (tmp_path / "coordinator" / "console-runs").exists()


def test_bad_input_is_refused_and_starts_nothing(configured: TestClient, tmp_path: Path) -> None:
    page = configured.get("/console/runs")
    assert page.status_code == 200 and 'id="start-run"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for form, message in [
        ({"epsilon": "0", "rounds": "5"}, "ε must be greater than 0 and at most 10"),
        ({"epsilon": "11", "rounds": "5"}, "ε must be greater than 0 and at most 10"),
        ({"epsilon": "x", "rounds": "5"}, "ε must be a number"),
        ({"epsilon": "3", "rounds": "21"}, "rounds must be between 1 and 20"),
        ({"rounds": "3"}, "ε must be a number"),
    ]:
        token = _csrf(configured, "/console/runs")
        r = configured.post("/console/runs", data={**form, "csrf_token": token})
        assert r.status_code == 400, form
        assert message in r.text and 'id="run-error"' in r.text
    _nothing_started(configured, tmp_path)


def test_csrf_and_session_are_required(configured: TestClient, tmp_path: Path) -> None:
    valid = {"epsilon": "3", "rounds": "5"}
    r = configured.post("/console/runs", data=valid)  # no token
    assert r.status_code == 403
    r = configured.post("/console/runs", data={**valid, "csrf_token": "wrong"})
    assert r.status_code == 403
    anonymous = TestClient(configured.app)
    token = _csrf(anonymous, "/console/sign-in")  # a token, but no analyst signed in
    r = anonymous.post("/console/runs", data={**valid, "csrf_token": token},
                       follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in"
    _nothing_started(configured, tmp_path)


def test_not_configured_starts_nothing(tmp_path: Path) -> None:
    client = _client(tmp_path, tmp_path / "superlink")  # no credentials, no registry URL
    page = client.get("/console/runs")
    assert 'id="not-configured"' in page.text and 'id="start-run"' not in page.text
    token = _csrf(client, "/console/runs")
    r = client.post("/console/runs", data={"epsilon": "3", "rounds": "5", "csrf_token": token})
    assert r.status_code == 409
    _nothing_started(client, tmp_path)


def test_runs_page_lists_the_superlink_runs(tmp_path: Path) -> None:
    runs = tmp_path / "superlink" / "runs"
    runs.mkdir(parents=True)
    card = {"run": {"rounds": 3, "epsilon": 3.0}, "metrics": {"auroc": 0.71}}
    (runs / "run-ok.json").write_text(
        json.dumps(
            {"status": "completed", "run_label": "run-ok", "card": card, "model_id": "m-123"}
        )
    )
    (runs / "run-ok.log").write_text("round 1: 3 nodes\nround 2: 3 nodes\nround 3: 3 nodes\n")
    (runs / "run-bad.json").write_text(
        json.dumps(
            {"status": "failed", "run_label": "run-bad", "reason": "only 1 node of 3 answered"}
        )
    )
    (runs / "ind-1.json").write_text(json.dumps({"status": "completed", "result": {}}))
    html = _client(tmp_path, tmp_path / "superlink").get("/console/runs").text  # fmt: skip
    ok = html[html.index('data-run="run-ok"') :]
    assert 'href="/console/models#model-m-123"' in ok and "已完成" in ok
    assert "round 3: 3 nodes" in ok and "auroc" in ok
    bad = html[html.index('data-run="run-bad"') :]
    assert "失败" in bad and "only 1 node of 3 answered" in bad
    assert "ind-1" not in html


@pytest.mark.parametrize(("lang", "rounds"), [("zh-CN", "轮数"), ("en", "rounds")])
def test_run_line_spaces_the_date_from_the_rounds(
    configured: TestClient, tmp_path: Path, lang: str, rounds: str
) -> None:
    """The run line reads "rounds 2 · <date>", never "rounds 2· <date>" (the template's line
    break after the rounds was eaten by trim_blocks)."""
    token = _csrf(configured, "/console/runs")
    r = configured.post(
        "/console/language",
        data={"lang": lang, "next": "/console/runs", "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303
    token = _csrf(configured, "/console/runs")
    r = configured.post("/console/runs", data={"epsilon": "1", "rounds": "2", "csrf_token": token})
    assert r.status_code in (200, 303), r.text
    launcher = configured.app.state.fl_runs  # type: ignore[attr-defined]
    try:
        (label,) = launcher.started
        html = configured.get("/console/runs").text
        assert f'lang="{lang}"' in html
        card = html[html.index(f'data-run="{label}"') :].split("</p>", 1)[0]
        line = " ".join(card.split())
        assert re.search(rf"{rounds} 2 · \S", line), line
        assert "2·" not in line
    finally:
        for started in launcher.started.values():
            started.process.kill()
            started.process.wait(timeout=30)
