"""Flower's own output (flower-superlink, flower-supernode and the flwr-serverapp/flwr-clientapp
processes they start) turned into log records, so ``ipjms fl superlink|supernode`` write the same
JSON lines as every other service (trust/logging_setup.py).

Pure: :class:`FlowerLineParser` takes the child's output line by line and yields
:class:`FlowerRecord` s — level from Flower's ``LEVEL :`` prefix (ANSI colours removed), Python
warnings as WARNING, blank lines dropped. A traceback becomes one ERROR record with the exception
type and its frames only: like logging_setup's rule for our own exceptions, the exception
*message* (which may quote input) is never kept. :func:`forward_output` is the I/O shell the
supervisor runs in a thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

__all__ = ["FlowerRecord", "FlowerLineParser", "forward_output"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FLOWER = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s?(.*)$")
# Python's logging default "%(asctime)s:%(levelname)s:…" as flwr-clientapp sometimes prints it
_DATED = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:(DEBUG|INFO|WARNING|ERROR|CRITICAL):?(.*)$")
_WARNING = re.compile(r"^\S+:\d+: (\w*Warning): (.*)$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (.+)$')
_EXC = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
TRACEBACK = "Traceback (most recent call last):"
LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
MAX_MSG = 2000


@dataclass(frozen=True)
class FlowerRecord:
    level: int
    msg: str
    exc_type: str | None = None
    exc_frames: tuple[str, ...] = field(default=())


class FlowerLineParser:
    def __init__(self) -> None:
        self._frames: list[str] | None = None  # inside a traceback
        self._after_warning = False

    def feed(self, raw: str) -> Iterator[FlowerRecord]:
        line = _ANSI.sub("", raw).rstrip("\r\n")
        if self._frames is not None:
            if line.startswith((" ", "\t")) or not line.strip():
                frame = _FRAME.match(line)
                if frame:
                    self._frames.append(f"{frame[1]}:{frame[2]} {frame[3]}")
                return
            frames, self._frames = self._frames, None
            exc = _EXC.match(line)
            yield FlowerRecord(
                logging.ERROR,
                "Flower process raised an exception",
                exc_type=exc[1] if exc else "unknown",
                exc_frames=tuple(frames[-8:]),
            )
            return
        if line.strip() == TRACEBACK:
            self._frames = []
            return
        if self._after_warning and line.startswith((" ", "\t")):
            return  # the source line Python prints under a warning
        self._after_warning = False
        text = line.strip()
        if not text:
            return
        for pattern in (_FLOWER, _DATED):
            m = pattern.match(text)
            if m:
                msg = m[2].strip()
                if msg:
                    yield FlowerRecord(LEVELS[m[1]], msg[:MAX_MSG])
                return
        m = _WARNING.match(text)
        if m:
            self._after_warning = True
            yield FlowerRecord(logging.WARNING, f"{m[1]}: {m[2]}"[:MAX_MSG])
            return
        yield FlowerRecord(logging.INFO, text[:MAX_MSG])

    def close(self) -> Iterator[FlowerRecord]:
        """End of output inside a traceback: still report it (type unknown)."""
        if self._frames is not None:
            frames, self._frames = self._frames, None
            yield FlowerRecord(
                logging.ERROR,
                "Flower process raised an exception",
                exc_type="unknown",
                exc_frames=tuple(frames[-8:]),
            )


def parse_lines(lines: Iterable[str]) -> list[FlowerRecord]:
    parser = FlowerLineParser()
    out = [r for line in lines for r in parser.feed(line)]
    return out + list(parser.close())


def forward_output(stream: IO[bytes], logger: logging.Logger) -> None:
    """Read the child's output to its end and log each record (run in a daemon thread)."""
    parser = FlowerLineParser()
    for raw in iter(stream.readline, b""):
        for record in parser.feed(raw.decode("utf-8", errors="replace")):
            _emit(logger, record)
    for record in parser.close():
        _emit(logger, record)


def _emit(logger: logging.Logger, record: FlowerRecord) -> None:
    extra = {}
    if record.exc_type is not None:
        # (the JSON formatter writes extra fields as scalars: frames as one "; "-joined string)
        extra = {"exc_type": record.exc_type, "exc_frames": "; ".join(record.exc_frames)}
    logger.log(record.level, "%s", record.msg, extra=extra)
