"""A launcher killed outright (SIGKILL, as a CI timeout or the OOM killer does) leaves no service
running: the kernel sends them SIGTERM (servicekit.processes.die_with_parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy.launcher import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

LAUNCHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from deploy.launcher import start_service
    root = Path(sys.argv[1])
    service = start_service(
        "consent",
        ["consent", "serve", "--data-dir", str(root / "consent"), "--port", "0"],
        base_url="http://127.0.0.1:{http}",
        log_dir=root / "logs",
        ports_dir=root / "consent",
    )
    (root / "child.pid").write_text(str(service.process.pid))
    import time
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent, now init, reaps it shortly)
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][:1] != "Z"


def test_services_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_until(lambda: (tmp_path / "child.pid").exists(), 90, what="the service to start")
        child = int((tmp_path / "child.pid").read_text())
        assert _alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        wait_until(lambda: not _alive(child), 20, what="the orphaned service to stop")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        pid_file = tmp_path / "child.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            time.sleep(0.1)
