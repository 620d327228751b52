"""The care worker in its own OS process (I/O edge), so the rules never compete with the API for
its interpreter: a node's writes run at the same speed with care on as off.

The node's background worker starts ``python -m node.care.worker_process`` and writes one JSON
line to its stdin — the :class:`WorkerSpec` (the database URL stays off the command line and the
environment). The child opens its own engine and store, runs a :class:`CareWorker` that reads the
durable commit log and stops when its stdin closes: the parent closed it to stop it, or the
parent died. After each commit in the parent's process the parent writes a newline to that
stdin (:meth:`WorkerProcess.wake`, a commit listener: ``store.events.on_commit``) and the child
reads the log at once; commits of other processes (other ``serve --workers``, an offline
command) are read every ``poll_seconds``. A lost wake costs at most that long, never an event:
the log is the only source. The parent restarts a child that dies; the new one resumes from the
position the worker stored, so nothing committed is missed (and replays are harmless, see
``worker.py``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.care.model_cards import RegistryGate

__all__ = ["WorkerSpec", "WorkerProcess", "offset_clock", "main"]

log = logging.getLogger("ipjms.node.care")


@dataclass(frozen=True)
class WorkerSpec:
    database_url: str
    base_url: str
    responsible_user: str
    tick_seconds: float
    poll_seconds: float
    clock_offset_seconds: float = 0.0
    # the risk-model gate (node/care/model_cards.py): registry, floor, credentials folder
    model_registry_url: str | None = None
    model_min_auroc: float = 0.70
    model_min_events: int = 100
    model_card_ttl_seconds: float = 300.0
    credentials_dir: str | None = None

    def model_gate(self) -> RegistryGate:
        from pathlib import Path

        from node.care.model_cards import RegistryGate
        from node.care.model_gate import ModelFloor

        return RegistryGate(
            self.model_registry_url,
            ModelFloor(self.model_min_auroc, self.model_min_events),
            Path(self.credentials_dir) if self.credentials_dir else None,
            ttl=self.model_card_ttl_seconds,
        )


def offset_clock(offset_seconds: float):  # type: ignore[no-untyped-def]
    """The care clock: real UTC time, moved ``offset_seconds`` ahead (tests and drills only)."""
    from node.care.worker import utc_now

    offset = timedelta(seconds=offset_seconds)

    def clock() -> datetime:
        return utc_now() + offset

    return clock


class WorkerProcess:
    """The parent's handle on the child: ``start()``, ``alive()``, ``stop()``."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._proc: subprocess.Popen[bytes] | None = None
        # the child's stdin is written by committing threads (wake) and closed by stop: never
        # a write to a closed (and perhaps reused) descriptor
        self._lock = threading.Lock()

    def start(self) -> None:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter and module, no shell
            [sys.executable, "-m", "node.care.worker_process"], stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(asdict(self.spec)).encode() + b"\n")
        proc.stdin.flush()
        os.set_blocking(proc.stdin.fileno(), False)  # a wake never makes a writer wait
        with self._lock:
            dead, self._proc = self._proc, proc
            if dead is not None and dead.stdin is not None:  # a restart: the old pipe closed
                with suppress(OSError):
                    dead.stdin.close()

    def wake(self) -> None:
        """Something was committed in this process: have the child read the log now. A full
        pipe (the child has wakes unread) or a child that is gone is fine: it reads on its
        timer anyway, and the supervisor restarts it."""
        with self._lock:
            if self._proc is None or self._proc.stdin is None or self._proc.stdin.closed:
                return
            with suppress(OSError):  # BlockingIOError (full), BrokenPipeError (gone)
                os.write(self._proc.stdin.fileno(), b"\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 15.0) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.stdin is not None:
                with suppress(OSError):
                    proc.stdin.close()  # EOF: the child stops its worker and exits
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    """The child: read the spec, run the worker until stdin closes."""
    from servicekit.logging_setup import configure_logging

    configure_logging("node-care-worker")
    line = sys.stdin.readline()
    if not line:
        return 0
    spec = WorkerSpec(**json.loads(line))

    from node.care.definitions import load_definitions
    from node.care.worker import CareWorker
    from node.store import FhirStore
    from servicekit.storage import make_engine

    engine = make_engine(spec.database_url)
    store = FhirStore(engine, base_url=f"{spec.base_url}/fhir")
    worker = CareWorker(
        store,
        load_definitions(),
        responsible_user=spec.responsible_user,
        tick_seconds=spec.tick_seconds,
        poll_seconds=spec.poll_seconds,
        clock=offset_clock(spec.clock_offset_seconds),
        model_gate=spec.model_gate().verdict,
    )
    worker.start()
    log.info("care worker process started", extra={"pid": os.getpid()})
    done = threading.Event()

    def watch_stdin() -> None:
        for _ in sys.stdin:  # a line per commit in the parent: read the log now
            worker.wake()
        done.set()  # EOF: the parent closed the pipe or died

    threading.Thread(target=watch_stdin, name="care-parent-watch", daemon=True).start()
    try:
        done.wait()
    finally:
        worker.stop()
        engine.dispose()
        log.info("care worker process stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
