"""Start services as child processes on loopback and wait until they answer ``/healthz``.

Used by ``ipjms demo``, ``ipjms up`` and the integration tests, so every real-process test starts
services exactly the way an operator would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from servicekit.ports import PORTS_FILE, free_port, read_announced_ports
from servicekit.processes import dying_with_parent

__all__ = ["free_port", "Service", "start_service", "wait_until", "wait_healthy", "ipjms_command"]


def ipjms_command(*args: str) -> list[str]:
    """The ``ipjms`` command run with this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "deploy.cli", *args]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is truthy or the deadline passes (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.alive():
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_healthy(service: Service, timeout: float = 60.0, verify: bool | str = True) -> None:
    def healthy() -> bool:
        if not service.alive():
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )
        try:
            r = httpx.get(f"{service.base_url}/healthz", timeout=2.0, verify=verify)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, interval=0.1, what=f"{service.name} to become healthy")


def _wait_for_ports(service: Service, ports_dir: Path, timeout: float) -> dict[str, int]:
    found: dict[str, int] = {}

    def announced() -> bool:
        if not service.alive():
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )
        found.update(read_announced_ports(ports_dir) or {})
        return bool(found)

    wait_until(announced, timeout, interval=0.05, what=f"{service.name} to announce its ports")
    return found


def start_service(
    name: str,
    args: Sequence[str],
    *,
    base_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 60.0,
    ports_dir: Path | None = None,
) -> Service:
    """Start ``ipjms <args>`` as a child process, logging to ``log_dir/<name>.log``.

    ``ports_dir``: the service was told ``--port 0`` and announces the ports it bound in
    ``ports_dir/bound-ports.json`` (``servicekit.ports``); wait for them, and fill ``base_url``
    from them (``"http://127.0.0.1:{http}"``). They are in ``service.extra["ports"]``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    if ports_dir is not None:
        (ports_dir / PORTS_FILE).unlink(missing_ok=True)  # a previous run's ports
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log_fh = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(
        dying_with_parent(ipjms_command(*args)),  # a killed launcher leaves no service behind
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
    )
    log_fh.close()
    service = Service(name, proc, base_url, log_path)
    if ports_dir is not None:
        try:
            ports = _wait_for_ports(service, ports_dir, timeout)
        except Exception:
            service.stop()
            raise
        service.base_url = base_url.format(**ports)
        service.extra["ports"] = ports
    if wait:
        try:
            wait_healthy(service, timeout)
        except Exception:
            service.stop()
            raise
    return service
