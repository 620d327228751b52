"""MLLP framing: any chunking of the byte stream reassembles exactly the framed messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.feeds.hl7v2.framing import Frame, MllpDecoder, frame

payload_bytes = st.integers(0, 255).filter(lambda b: b not in (0x0B, 0x1C))
payloads = st.lists(payload_bytes, max_size=300).map(bytes)
garbage = st.lists(st.integers(0, 255).filter(lambda b: b != 0x0B), max_size=20).map(bytes)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(garbage, payloads), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
)
def test_random_chunking_reassembles_exact_messages(
    messages: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(junk + frame(body) for junk, body in messages)
    decoder = MllpDecoder(max_message_bytes=10_000)
    out: list[Frame] = []
    for chunk in chunked(stream, cuts):
        out += decoder.feed(chunk)
    assert [f.payload for f in out] == [body for _, body in messages]
    assert not any(f.oversize for f in out)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1000), max_size=20),
)
def test_oversize_frames_are_reported_and_the_stream_stays_in_step(
    sizes: list[int], cuts: list[int]
) -> None:
    limit = 30
    bodies = [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
    stream = b"".join(frame(b) for b in bodies)
    decoder = MllpDecoder(max_message_bytes=limit)
    out: list[Frame] = []
    for chunk in chunked(stream, cuts):
        out += decoder.feed(chunk)
    assert len(out) == len(bodies)
    for body, got in zip(bodies, out, strict=True):
        if len(body) > limit:
            assert got.oversize and got.payload == b""
        else:
            assert not got.oversize and got.payload == body


def test_unfinished_frame_is_dropped_at_a_new_start_block() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bpartial\x0bwhole\x1c\r") == [Frame(b"whole")]


def test_frame_refuses_payloads_containing_delimiters() -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        frame(b"a\x1cb")
