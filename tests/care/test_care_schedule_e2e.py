"""The scheduler over a real node process with a moved clock (issue 14, must-show 2): an urgent
alert nobody acknowledges escalates to the care team once its rule's time has passed, and a
follow-up visit that is overdue becomes an alert — on the doctor's SSE stream and in FHIR search —
which the doctor dismisses with a reason (audited).

The clock is moved through settings, not by patching: the node is served again on the same data
directory with ``IPJMS_NODE_CARE__CLOCK_OFFSET_SECONDS`` (the care clock runs that far ahead) and
a short ``tick_seconds``. Each restart also shows the worker resuming from its stored position
in the commit log; the stream reconnects with ``Last-Event-ID`` and misses nothing.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.launcher import start_service

from .test_care_e2e import PASSWORD, Stream, _condition, _get, _ipjms, _patient, _plans, _post

pytestmark = pytest.mark.slow
HOUR, DAY = 3600.0, 86400.0
ESCALATED = "https://ipjms.example.org/fhir/StructureDefinition/care-alert-escalated"
RULE = "https://ipjms.example.org/fhir/CodeSystem/care-rule"


class Node:
    def __init__(self, root: Path) -> None:
        self.root, self.data_dir = root, root / "node"
        _ipjms("node", "init", "--org", "org-clinic-c", "--name", "Clinic C", "--data-dir",
               str(self.data_dir), "--level", "community",
               env={"IPJMS_ADMIN_PASSWORD": PASSWORD})  # fmt: skip
        _ipjms("node", "user", "add", "--data-dir", str(self.data_dir), "--username", "dr-li",
               "--role", "doctor", env={"IPJMS_USER_PASSWORD": PASSWORD})  # fmt: skip
        self.service: Any = None
        self.url = self.token = ""

    def serve(self, offset_seconds: float, tick_seconds: float) -> None:
        self.stop()
        env = {"IPJMS_NODE_CARE__ENABLED": "true", "IPJMS_NODE_CARE__RESPONSIBLE_USER": "dr-li",
               "IPJMS_NODE_CARE__TICK_SECONDS": str(tick_seconds),
               "IPJMS_NODE_CARE__CLOCK_OFFSET_SECONDS": str(offset_seconds)}  # fmt: skip
        self.service = start_service(
            f"care-clock-{offset_seconds:.0f}",
            ["node", "serve", "--data-dir", str(self.data_dir), "--port", "0"],
            base_url="http://127.0.0.1:{http}", log_dir=self.root / "logs", env=env,
            ports_dir=self.data_dir,
        )  # fmt: skip
        self.url = self.service.base_url
        self.token = httpx.post(
            f"{self.url}/auth/token",
            data={"grant_type": "password", "username": "dr-li", "password": PASSWORD},
            timeout=30,
        ).json()["access_token"]

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("care-clock"))
    try:
        yield n
    finally:
        n.stop()


def _bp(pid: str, systolic: int, diastolic: int) -> dict[str, Any]:
    def part(code: str, value: int) -> dict[str, Any]:
        q = {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
             "code": "mm[Hg]"}  # fmt: skip
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": q}  # fmt: skip

    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "component": [part("8480-6", systolic), part("8462-4", diastolic)],
    }


def _rule(issue: dict[str, Any]) -> str:
    return str(next(c["code"] for c in issue["code"]["coding"] if c["system"] == RULE))


def _until(stream: Stream, wanted, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]  # noqa: ANN001
    """Events from ``stream`` until one satisfies ``wanted`` (others are skipped)."""
    seen = []
    while True:
        eid, issue, _ = stream.next(timeout=timeout)
        seen.append((_rule(issue), issue.get("status")))
        if wanted(issue):
            return eid, issue
        assert len(seen) < 50, seen


def test_unacknowledged_urgent_alert_escalates_and_overdue_follow_up_alerts(node: Node) -> None:
    # real time: enrol a hypertensive patient; 186/112 → urgent alert to dr-li (2 h to acknowledge)
    node.serve(offset_seconds=0, tick_seconds=3600)
    pid = _patient(node.url, node.token)
    assert _post(node.url, node.token, "/fhir/Condition", _condition(pid, "I10")).status_code == 201
    [plan] = _wait_plan(node, pid)
    stream = Stream(node.url, node.token)
    r = _post(node.url, node.token, "/fhir/Observation", _bp(pid, 186, 112))
    assert r.status_code == 201, r.text
    eid, urgent = _until(stream, lambda i: _rule(i) == "htn-bp-urgent")
    stream.close()
    assert urgent["status"] == "preliminary" and urgent["severity"] == "high"
    team = plan["careTeam"][0]["reference"]

    # 3 hours later: the open urgent alert escalates to the care team, once
    node.serve(offset_seconds=3 * HOUR, tick_seconds=0.5)
    again = Stream(node.url, node.token, last_event_id=eid)
    eid, escalated = _until(again, lambda i: i["id"] == urgent["id"])
    assert any(e["url"] == ESCALATED for e in escalated["extension"])
    assert escalated["status"] == "preliminary"  # still open: escalation is not acknowledgement
    messages = _get(node.url, node.token, f"/fhir/Communication?patient=Patient/{pid}")
    stat = [e["resource"] for e in messages["entry"] if e["resource"].get("priority") == "stat"]
    assert [m["recipient"][0]["reference"] for m in stat] == [team]
    assert stat[0]["about"][0]["reference"] == f"DetectedIssue/{urgent['id']}"
    with pytest.raises(queue.Empty):  # a second tick does not escalate again
        _until(again, lambda i: i["id"] == urgent["id"], timeout=2.0)
    again.close()

    # 20 days later: the early follow-up (due in 2 weeks, + 3 days' grace) is overdue → alert
    node.serve(offset_seconds=20 * DAY, tick_seconds=0.5)
    later = Stream(node.url, node.token, last_event_id=eid)
    _, overdue = _until(later, lambda i: _rule(i) == "follow-up-overdue")
    later.close()
    assert overdue["patient"]["reference"] == f"Patient/{pid}"
    assert overdue["evidence"][0]["detail"][0]["reference"].startswith("Task/")
    query = f"patient=Patient/{pid}&code={RULE}|follow-up-overdue"
    found = _get(node.url, node.token, f"/fhir/DetectedIssue?{query}")
    assert [e["resource"]["id"] for e in found["entry"]] == [overdue["id"]]

    # the doctor dismisses it with a reason: recorded on the alert and audited by a Provenance
    path = f"/care/alerts/{overdue['id']}/$dismiss"
    assert _post(node.url, node.token, path, {"reason": ""}).status_code == 400
    r = _post(node.url, node.token, path, {"reason": "Seen at another clinic on day 12"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["mitigation"][0]["action"]["text"] == "Seen at another clinic on day 12"
    audit = _get(node.url, node.token, f"/fhir/Provenance?target=DetectedIssue/{overdue['id']}")
    assert audit["total"] == 1
    print("\nmoved clock: escalation and overdue follow-up seen on the stream:",
          json.dumps({"escalated": urgent["id"], "overdue": overdue["id"]}))  # fmt: skip


def _wait_plan(node: Node, pid: str) -> list[dict[str, Any]]:
    from .test_care_e2e import _wait

    return _wait(lambda: _plans(node.url, node.token, pid), timeout=60)  # type: ignore[no-any-return]
