"""A launcher killed outright (SIGKILL, as a CI timeout or the OOM killer does) leaves no service
running: the kernel sends them SIGTERM (servicekit.processes.dying_with_parent)."""

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


def test_the_wrapper_does_not_start_a_command_whose_parent_is_already_gone(tmp_path: Path) -> None:
    """The child checks, after asking for the signal, that its parent is still the process that
    started it; if not (the parent died in between), it exits without running the command."""
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    not_my_parent = str(os.getpid() + 1_000_000)
    done = subprocess.run(
        [sys.executable, "-m", "servicekit.processes", not_my_parent, "--", *command],
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert done.returncode == 0
    assert not marker.exists()
    from servicekit.processes import dying_with_parent

    subprocess.run(dying_with_parent(command), cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert marker.exists(), "with its real parent the wrapped command runs"


def test_the_wrapper_refuses_a_malformed_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "servicekit.processes", "not-a-pid", "--", "true"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr
