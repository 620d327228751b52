"""Flower's own output → log records (federated/flower_logs.py), on lines as flower-supernode,
flwr-clientapp and Python print them, and through the supervisor's pipe into JSON lines."""

from __future__ import annotations

import io
import json
import logging

from federated.flower_logs import forward_output, parse_lines
from servicekit.logging_setup import JsonFormatter

# Captured from a SuperNode's output in the demo (ANSI colours as Flower writes them).
SUPERNODE_OUTPUT = [
    "\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode\n",
    "\x1b[92mINFO \x1b[0m:      \n",
    "\x1b[92mINFO \x1b[0m:      [RUN 98713025612519772]\n",
    "\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: a3f1183a68e4)\n",
    "Successfully installed ipjms-fl-app to /data/flwr/apps/ipjms.ipjms-fl-app.1.0.0.7d6fac3a.\n",
    "/venv/lib/python3.11/site-packages/opacus/privacy_engine.py:98: UserWarning: Secure RNG "
    "turned off. This is perfectly fine for experimentation\n",
    "  warnings.warn(\n",
    "11/26/2026 00:16:25:INFO:\n",
    "11/26/2026 00:16:26:INFO:declining round: cohort too small: 3 eligible patient(s)\n",
    "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying...\n",
    "\n",
]

TRACEBACK = [
    "\x1b[91mERROR \x1b[0m:     ClientApp raised an exception\n",
    "Traceback (most recent call last):\n",
    '  File "/venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py", line 139, in '
    "__call__\n",
    "    return self._call(message, context)\n",
    '  File "/work/main/federated/cohort.py", line 180, in cohort\n',
    "    raise CohortError(detail)\n",
    "federated.cohort.CohortError: Patient Quixotefield Zebulonia PHI-93847561-X refused\n",
    "\x1b[92mINFO \x1b[0m:      Sent reply\n",
]


def test_flower_lines_become_levelled_records() -> None:
    records = parse_lines(SUPERNODE_OUTPUT)
    assert [(logging.getLevelName(r.level), r.msg) for r in records] == [
        ("INFO", "Starting Flower SuperNode"),
        ("INFO", "[RUN 98713025612519772]"),
        ("INFO", "Receiving: train message (ID: a3f1183a68e4)"),
        ("INFO", "Successfully installed ipjms-fl-app to "
                 "/data/flwr/apps/ipjms.ipjms-fl-app.1.0.0.7d6fac3a."),
        ("WARNING", "UserWarning: Secure RNG turned off. This is perfectly fine for "
                    "experimentation"),
        ("INFO", "declining round: cohort too small: 3 eligible patient(s)"),
        ("WARNING", "Connection attempt failed, retrying..."),
    ]  # fmt: skip
    assert not any("\x1b" in r.msg for r in records)


def test_a_traceback_is_one_error_with_type_and_frames_but_not_its_message() -> None:
    records = parse_lines(TRACEBACK)
    assert [logging.getLevelName(r.level) for r in records] == ["ERROR", "ERROR", "INFO"]
    exc = records[1]
    assert exc.exc_type == "federated.cohort.CohortError"
    assert exc.exc_frames == (
        "/venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py:139 __call__",
        "/work/main/federated/cohort.py:180 cohort",
    )
    text = repr(records)
    for secret in ("Quixotefield", "Zebulonia", "PHI-93847561-X", "raise CohortError"):
        assert secret not in text
    assert records[2].msg == "Sent reply"
    # output that ends inside a traceback is still reported
    cut = parse_lines(TRACEBACK[:4])
    assert cut[-1].exc_type == "unknown" and len(cut[-1].exc_frames) == 1


def test_forwarded_output_is_json_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("supernode"))
    logger = logging.getLogger("flower.test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        raw = "".join(SUPERNODE_OUTPUT + TRACEBACK).encode()
        forward_output(io.BytesIO(raw), logger)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line one JSON object
    assert len(entries) == 10
    for e in entries:
        assert {"ts", "level", "service", "logger", "msg"} <= e.keys()
        assert e["service"] == "supernode" and e["logger"] == "flower.test"
    errors = [e for e in entries if e.get("exc_type")]
    assert errors and errors[0]["exc_frames"].endswith("/work/main/federated/cohort.py:180 cohort")
    assert "Quixotefield" not in stream.getvalue()
