"""Run a Flower process (SuperLink or SuperNode) as a child and answer ``GET /healthz`` (and
``GET /metrics``) for it, so ``ipjms fl superlink|supernode`` behave like every other IPJMS
service — including their logs: the child's output (Flower's and that of the app processes it
starts) is read through a pipe and logged as JSON records (federated/flower_logs.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from federated.flower_logs import forward_output
from servicekit.processes import dying_with_parent

__all__ = ["Supervised", "port_open"]


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _metrics(supervised: Supervised, service: str) -> Any:
    """``/metrics``: is the Flower process running, and are its ports answering."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    up = Gauge("ipjms_flower_process_up", "The supervised Flower process is running",
               ["service"], registry=registry)  # fmt: skip
    up.labels(service).set_function(lambda: float(supervised.proc.poll() is None))
    ready = Gauge("ipjms_flower_ready", "The Flower process answers on its ports",
                  ["service"], registry=registry)  # fmt: skip
    ready.labels(service).set_function(lambda: float(supervised.ready()))
    return registry


class Supervised:
    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str],
        logger: logging.Logger,
        ready: Callable[[], bool],
        health_host: str,
        health_port: int,
        info: dict[str, Any],
        companions: Sequence[Sequence[str]] = (),
    ) -> None:
        # Companions (the SuperNode's ClientApp zygote) start first, so that they are ready
        # before the Flower process asks for them; each runs in a process group of its own,
        # stopped with the Flower process's.
        self.companions = [_start_group(c, env, logger) for c in companions]
        # The Flower process gets its own process group: its SuperExec and app processes are
        # in it too, so stopping the group leaves nothing behind.
        self.proc, self.output = _start_group(args, env, logger)
        self.ready = ready
        self.info = info
        supervised = self

        metrics = _metrics(self, str(info.get("service", "flower")))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    payload = generate_latest(metrics)
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if self.path != "/healthz":
                    self.send_response(404)
                    self.end_headers()
                    return
                alive = supervised.proc.poll() is None
                ok = alive and supervised.ready()
                body = json.dumps(
                    {"status": "ok" if ok else "starting", **supervised.info}
                ).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self.http = ThreadingHTTPServer((health_host, health_port), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait(self) -> int:
        """Forward SIGTERM/SIGINT to the child, wait for it, stop the health server."""

        def forward(signum: int, _frame: object) -> None:
            if self.proc.poll() is None:
                self.proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        try:
            code = self.proc.wait()
        finally:
            self.stop_group()
            self.http.shutdown()
            self.output.join(timeout=5)  # the last lines the group wrote
        return code

    def stop_group(self) -> None:
        """SIGTERM, then SIGKILL, whatever is left of the Flower process group (and of each
        companion's)."""
        for proc in (self.proc, *(c for c, _ in self.companions)):
            _stop_group(proc)


def _start_group(
    args: Sequence[str], env: dict[str, str], logger: logging.Logger
) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    """A child in a session of its own, its output forwarded to ``logger``."""
    proc = subprocess.Popen(
        dying_with_parent(args),  # a killed supervisor leaves no Flower process behind
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output = threading.Thread(target=forward_output, args=(proc.stdout, logger), daemon=True)
    output.start()
    return proc, output


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # the leader is gone; give the rest of the group a moment, then make sure
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
