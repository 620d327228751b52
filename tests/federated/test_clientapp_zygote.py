"""The SuperNode's ClientApp zygote and its ``flwr-clientapp`` launcher, as real processes: the
launcher's argv, streams, working directory, environment and exit status reach Flower's entry
point in a forked child; without a zygote the launcher runs the real ``flwr-clientapp``."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.launcher import wait_until
from federated.clientapp_zygote import write_launcher, zygote_command, zygote_socket_path


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    sock = zygote_socket_path(tmp_path)
    proc = subprocess.Popen(
        zygote_command(sock), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, 120, 0.1, "the zygote")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield sock, proc
    finally:
        proc.terminate()
        assert proc.wait(60) == 0  # SIGTERM: it goes at once, without interpreter teardown
        assert not sock.exists()  # and takes its socket with it


def _launch(launcher: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(launcher), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=60,
    )


def test_launches_flower_entry_point_in_a_forked_child(
    tmp_path: Path, zygote: tuple[Path, subprocess.Popen[str]]
) -> None:
    sock, proc = zygote
    assert oct(sock.stat().st_mode & 0o777) == "0o600"  # only this node's user may launch
    launcher = write_launcher(tmp_path / "bin", sock)
    ok = _launch(launcher, "--help", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "--clientappio-api-address" in ok.stdout  # Flower's own parser, on our stdout
    assert "launcher" not in ok.stderr  # no fallback
    bad = _launch(launcher, "--no-such-option", cwd=tmp_path)
    assert bad.returncode == 2  # argparse's status reaches the SuperExec
    assert "flwr-clientapp: error:" in bad.stderr  # on the launcher's stderr
    assert proc.poll() is None  # the zygote serves the next launch


def test_child_runs_with_the_launchers_cwd_environment_and_signals(
    tmp_path: Path, zygote: tuple[Path, subprocess.Popen[str]]
) -> None:
    """A ClientApp whose SuperNode is unreachable keeps retrying, in the launcher's working
    directory, having read its token through the launcher's HOME; a SIGTERM to the launcher
    reaches it (Flower's own handler answers), and its end is the launcher's exit status."""
    sock, zproc = zygote
    launcher = write_launcher(tmp_path / "bin", sock)
    here = tmp_path / "cwd"
    here.mkdir()
    home = tmp_path / "home"  # the token file is found only through the launcher's HOME
    home.mkdir()
    (home / "token").write_text("t")
    log = tmp_path / "out.txt"
    with log.open("w") as fh:
        out = subprocess.Popen(
            [str(launcher), "--clientappio-api-address", "127.0.0.1:1", "--insecure",
             "--token-file", "~/token"],
            stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=here,
            env={**os.environ, "HOME": str(home)},
        )  # fmt: skip

    def children() -> list[int]:
        return [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(int(p.name)) == zproc.pid
        ]

    try:
        wait_until(lambda: "Connection attempt failed" in log.read_text(), 60, 0.1, "retries")
        assert "does not point to a file" not in log.read_text()
        (child,) = children()
        assert Path(f"/proc/{child}/cwd").resolve() == here.resolve()
        out.send_signal(signal.SIGTERM)  # relayed to the child
        wait_until(lambda: "Task stopped by user" in log.read_text(), 60, 0.1, "the handler")
        os.kill(child, signal.SIGKILL)  # (Flower's handler then waits on its dead channel)
        assert out.wait(30) != 0
    finally:
        if out.poll() is None:
            out.kill()
    wait_until(lambda: not children(), 20, 0.1, "the child to be reaped")


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_without_a_zygote_the_launcher_runs_the_real_flwr_clientapp(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path / "bin", tmp_path / "absent.sock")
    ok = _launch(launcher, "--help", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "--clientappio-api-address" in ok.stdout
    assert "no zygote at" in ok.stderr and "starting" in ok.stderr


def test_malformed_requests_are_refused_and_the_zygote_goes_on(
    tmp_path: Path, zygote: tuple[Path, subprocess.Popen[str]]
) -> None:
    import socket

    sock, proc = zygote
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(b"5\nnot json")  # no streams attached, not JSON
        assert s.recv(100) == b""  # closed without a launch
    launcher = write_launcher(tmp_path / "bin", sock)
    assert _launch(launcher, "--help", cwd=tmp_path).returncode == 0
    assert proc.poll() is None
