"""trust/logging_setup.py: JSON lines written by a background thread, nothing lost at exit, and
exception messages (which may quote patient data) never written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging
from servicekit.logging_setup import configure_logging
configure_logging("first")
configure_logging("node")  # reconfiguring stops the first writer and starts another
log = logging.getLogger("ipjms.test")
for i in range(500):
    log.info("line %d", i, extra={"n": i})
try:
    raise ValueError("Margarethe Quellenberg HF-1951-0042")
except ValueError:
    log.exception("import failed")
"""


def test_every_line_is_written_as_json_by_exit_and_no_exception_message() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["n"] for e in lines[:-1]] == list(range(500))  # all of them, in order
    assert {e["service"] for e in lines} == {"node"}
    last = lines[-1]
    assert last["msg"] == "import failed" and last["exc_type"] == "ValueError"
    assert last["exc_frames"] and "Quellenberg" not in done.stderr
