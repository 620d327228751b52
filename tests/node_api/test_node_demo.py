"""`ipjms demo` end to end with real processes: exits 0 and prints the nodes' record counts."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from deploy.demo.chapter_nodes import SEED_PATIENTS
from deploy.demo.network import DEMO_NODES
from deploy.launcher import ipjms_command


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the whole story, federated training included
def test_demo_runs_and_prints_node_counts(tmp_path: Path, synthea_dir: Path) -> None:
    env = {**os.environ, "COLUMNS": "250", "IPJMS_SHARED_DATA": str(synthea_dir.parents[1])}
    # Two training rounds instead of the story's five: every chapter still runs (the rounds
    # themselves are covered by tests/federated on the same deployment engine), and the suite
    # stays within its time.
    result = subprocess.run(
        ipjms_command("demo", "--workdir", str(tmp_path / "demo"), "--fl-rounds", "2"),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    synthea_patients = len(list(synthea_dir.glob("[A-Z]*_*.json")))
    for org, _name, _level, profile in DEMO_NODES:
        line = re.search(rf"^\s*{org}: Patient (\d+), .*Observation (\d+)", result.stdout, re.M)
        assert line, f"no counts printed for {org}"
        patients, observations = int(line[1]), int(line[2])
        extra = synthea_patients if profile == "tertiary" else 0
        assert patients == SEED_PATIENTS[profile] + extra
        assert observations > patients
        assert (tmp_path / "demo" / f"node-{org}" / "node.toml").is_file()
    assert "failed" not in result.stdout.split("Demo steps")[-1]
    assert re.search(r"✔ Federated training: 2 rounds", result.stdout)
    assert "round 2/2" in result.stdout
