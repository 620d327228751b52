"""Two services started at once against one fresh database migrate it exactly once (issue 22):
``servicekit.storage.upgrade_schema`` holds a PostgreSQL advisory lock (SQLite: a file lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("migrate_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _start_two_at_once(url: str, tmp_path: Path) -> list[list[str]]:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for p in procs:  # both have imported everything and opened their engine
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outputs.append(out.splitlines())
    return outputs


@pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_two_services_started_at_once_migrate_exactly_once(db_url: str, tmp_path: Path) -> None:
    first, second = _start_two_at_once(db_url, tmp_path)
    applied = [line for line in first + second if line.startswith("APPLIED")]
    # every revision of every schema ran once, in one of the two processes (the other waited
    # on the lock, then found the schema at head)...
    assert len(applied) == len(set(applied)), applied
    assert "DONE" in first and "DONE" in second
    # ...and every revision the node has, so none was skipped by the process that waited
    assert len(applied) == _node_revisions(), applied


def _node_revisions() -> int:
    from node.app import migration_folders
    from node.store.fhir_store import MIGRATIONS_DIR as STORE

    folders = [STORE, *(folder for _name, folder in migration_folders())]
    return sum(len(list((f / "versions").glob("*.py"))) for f in folders)
