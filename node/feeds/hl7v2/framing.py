"""MLLP framing (pure): <VT> message <FS><CR>, reassembled from arbitrary chunks."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["END", "START", "Frame", "MllpDecoder", "frame"]

START = b"\x0b"
END = b"\x1c\x0d"


def frame(message: bytes) -> bytes:
    if START in message or b"\x1c" in message:
        raise ValueError("an MLLP payload cannot contain VT (0x0b) or FS (0x1c)")
    return START + message + END


@dataclass(frozen=True)
class Frame:
    """One decoded frame; ``oversize`` frames had their payload dropped (it exceeded the limit)."""

    payload: bytes
    oversize: bool = False


class MllpDecoder:
    """Feed it bytes as they arrive; it returns every frame completed so far.

    Bytes outside a frame (between FS CR and the next VT) are ignored, as MLLP receivers do. A frame
    longer than ``max_message_bytes`` is discarded up to its end and reported as ``oversize``, so
    the connection stays in step and the sender gets a rejection for exactly that message.
    """

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversize = False
        self._pending_fs = False  # saw FS as the last byte; waiting for CR

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        i, n = 0, len(data)
        while i < n:
            if not self._in_frame:
                j = data.find(START, i)
                if j < 0:
                    break
                self._start_frame()
                i = j + 1
                continue
            if self._pending_fs:
                self._pending_fs = False
                if data[i] == 0x0D:
                    frames.append(
                        Frame(b"", True) if self._oversize else Frame(bytes(self._buffer))
                    )
                    self._buffer.clear()
                    self._in_frame = False
                    i += 1
                    continue
                self._append(b"\x1c")  # a lone FS inside the payload is kept as data
            stops = [k for k in (data.find(b"\x1c", i), data.find(START, i)) if k >= 0]
            if not stops:
                self._append(data[i:])
                break
            stop = min(stops)
            self._append(data[i:stop])
            if data[stop] == 0x1C:
                self._pending_fs = True
            else:  # a new start block before the end: the unfinished frame is dropped
                self._start_frame()
            i = stop + 1
        return frames

    def _start_frame(self) -> None:
        self._in_frame, self._oversize, self._pending_fs = True, False, False
        self._buffer.clear()

    def _append(self, chunk: bytes) -> None:
        if self._oversize or not chunk:
            return
        if len(self._buffer) + len(chunk) > self.max_message_bytes:
            self._oversize = True
            self._buffer.clear()
            return
        self._buffer.extend(chunk)

    @property
    def buffered(self) -> int:
        return len(self._buffer)
