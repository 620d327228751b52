"""Structured JSON logs for every IPJMS service: one JSON object per line on stderr.

``configure_logging(service)`` is called once by each ``serve`` command (node, consent
registry, coordinator, and ``ipjms fl superlink|supernode`` supervisors) before the server starts;
uvicorn is then run with ``log_config=None`` so its loggers use the same handler.

Writing is off the request path: a handler only formats the line and puts it on a queue; one
background thread writes the lines to stderr (a write to a log file can wait for the file
system's journal while databases on the same disk fsync — measured at several ms per line in
the coordinator's Send). The queue is drained when the process exits normally; a SIGKILLed
process may lose the last few lines, never a database write.

Line shape: ``{"ts": "2026-…Z", "level": "INFO", "service": "node", "logger": "ipjms.node",
"msg": "…"}`` plus ``exc_type`` and ``exc_frames`` (file:line function) for exceptions.

No PHI by construction where it can be enforced here: services log ids, pseudonyms and counts
(their own rule); on top of that, exception *messages* are never written (validation errors of
pydantic/FHIR models quote the offending input, which may be a name or an identifier) — only the
exception type and the frames — and uvicorn's access log (request paths carry ids and search
values such as ``name=``) stays off.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import traceback
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

# LogRecord attributes that are not "extra" fields (uvicorn adds an ANSI-coloured copy).
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _exc, tb = record.exc_info
            entry["exc_type"] = exc_type.__name__
            entry["exc_frames"] = [
                f"{frame.filename}:{frame.lineno} {frame.name}"
                for frame in traceback.extract_tb(tb)[-8:]
            ]
        return json.dumps(entry, ensure_ascii=False, default=str)


_listener: QueueListener | None = None


def _stop_listener() -> None:
    """Write what is still queued and stop the writer thread (at exit, or on reconfiguring)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(service: str, level: str | None = None) -> None:
    """Route every logger (ours, uvicorn's, grpc's, Flower's) to one JSON handler whose lines a
    background thread writes to stderr.

    Idempotent. ``level`` defaults to ``IPJMS_LOG_LEVEL`` or INFO.
    """
    global _listener
    _stop_listener()
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    # The JSON line is made in the logging thread (QueueHandler.prepare formats the record, so
    # exc_info is reduced to type and frames before the record crosses threads) …
    handler = QueueHandler(lines)
    handler.setFormatter(JsonFormatter(service))
    # … and written as it is by the writer thread.
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))
    _listener = QueueListener(lines, writer)
    _listener.start()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("IPJMS_LOG_LEVEL") or "INFO").upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "flwr"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Request lines carry ids and search values: never logged (metrics count routes instead).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outgoing URL (query strings may hold identifiers); alembic chatters.
    for name in ("httpx", "httpcore", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


atexit.register(_stop_listener)
