"""Commit events of the feeds, through their real entry points: HL7 v2 messages over the node
app's MLLP listener, and ``ipjms node ingest`` (FHIR files and a CSV feed) run as an operator runs
it, in its own process. One event per committed change, named after the feed; nothing for a
refused message or file, and nothing for input that is already here. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import hl7

from deploy.launcher import ipjms_command
from node.app import create_app
from node.feeds.hl7v2 import send_mllp
from node.feeds.hl7v2.node_service import mllp_service
from node.identity import NATIONAL_ID_SYSTEM
from node.settings import NodeSettings
from node.store import CommitEvent, FhirStore, migrate
from node_feeds.hl7_samples import NATIONAL_ID, oru
from servicekit.storage import make_engine


def _summary(events: list[CommitEvent]) -> list[tuple[str, str, str]]:
    return [(e.resource_type, e.interaction, e.writer) for e in events]


def test_hl7v2_messages_over_the_node_listener(db_url: str, tmp_path: Path) -> None:
    app = create_app(NodeSettings(data_dir=tmp_path / "node", db_url=db_url, mllp_port=0))
    store: FhirStore = app.state.store
    got: list[CommitEvent] = []
    store.events.subscribe("test", got.extend)

    async def send_all(messages: list[str]) -> list[str]:
        async with mllp_service(app) as server:  # port 0: the one the OS picked
            port = server.sockets[0].getsockname()[1]
            return [await asyncio.to_thread(send_mllp, "127.0.0.1", port, m) for m in messages]

    acks = asyncio.run(send_all([oru(), oru()]))  # the same message twice
    assert [str(hl7.parse(a).segment("MSA")[1]) for a in acks] == ["AA", "AA"]
    assert _summary(got) == [
        ("Patient", "create", "feed:hl7v2/LIS"),
        *[("Observation", "create", "feed:hl7v2/LIS")] * 4,
        ("DiagnosticReport", "create", "feed:hl7v2/LIS"),
    ]  # the second arrival was already here: no change, no event
    assert len({e.commit_seq for e in got}) == 1  # one message, one commit
    assert store.events.read_since(0) == got
    # A message the store refuses (its patient matches two records): AE, and no event.
    twin = {"resourceType": "Patient", "name": [{"family": "Nowak"}],
            "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}]}  # fmt: skip
    store.create(twin, writer="test")
    got.clear()
    other = oru(msh=oru().split("\r")[0].replace("MSG00042", "MSG00043"))
    [ack] = asyncio.run(send_all([other]))
    assert str(hl7.parse(ack).segment("MSA")[1]) == "AE"
    assert got == [] and store.events.head() == 7
    app.state.engine.dispose()


def _ipjms(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("IPJMS_ADMIN_PASSWORD", None)
    return subprocess.run(
        ipjms_command(*args), capture_output=True, text=True, env=env, timeout=240
    )


CSV = f"""patient_identifier_system,patient_identifier,loinc,value,unit,effective_datetime
{NATIONAL_ID_SYSTEM},{NATIONAL_ID},2345-7,128,mg/dL,2025-03-14T08:15:00+01:00
{NATIONAL_ID_SYSTEM},{NATIONAL_ID},8480-6,142,mm[Hg],2025-03-14T08:20:00Z
"""


def test_cli_ingest_of_fhir_files_and_a_csv_feed(db_url: str, tmp_path: Path) -> None:
    """The events are written by another process: this one reads them from the durable log,
    as a subscriber that was not running while they were committed."""
    data_dir, inbox = tmp_path / "node", tmp_path / "inbox"
    inbox.mkdir()
    patient = {"resourceType": "Patient", "id": "anna", "gender": "female",
               "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}]}  # fmt: skip
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "class": {"code": "AMB"}, "subject": {"reference": "Patient/anna"}}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": patient}, {"resource": encounter}]}  # fmt: skip
    (inbox / "anna.json").write_text(json.dumps(bundle))
    (inbox / "lab.csv").write_text(CSV)
    wrong = {"resourceType": "Patient", "id": "x", "birthDate": "never"}
    bad = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": wrong}]}
    (inbox / "wrong.json").write_text(json.dumps(bad))
    args = ["node", "init", "--org", "org-ev", "--name", "Events", "--data-dir", str(data_dir)]
    r = _ipjms(*args, "--level", "community", "--db", db_url)
    assert r.returncode == 0, r.stderr
    for _ in range(2):  # the same files twice: the second run adds nothing
        r = _ipjms("node", "ingest", "--data-dir", str(data_dir), str(inbox))
        assert r.returncode == 1 and "wrong.json" in r.stderr  # the refused file is reported
    engine = make_engine(db_url)
    migrate(engine)
    store = FhirStore(engine)
    got: list[CommitEvent] = []
    store.events.subscribe("care", got.extend)  # catches up from the log
    assert _summary(got) == [
        ("Patient", "create", "ingest:anna.json"),
        ("Encounter", "create", "ingest:anna.json"),
        ("Observation", "create", "feed:csv/lab.csv"),
        ("Observation", "create", "feed:csv/lab.csv"),
    ]
    assert [e.position for e in got] == [1, 2, 3, 4]
    assert [e.commit_seq for e in got] == [1, 1, 2, 2]  # one commit per file
    assert store.counts() == {"Encounter": 1, "Observation": 2, "Patient": 1}
    engine.dispose()
