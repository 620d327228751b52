"""MLLP over TCP: the node's listener (asyncio) and a small client.

The node app starts the listener in its lifespan::

    async with mllp_listener(host, port, store_submitter(store)):
        ...

Each connection may carry many messages; they are handled in order and each gets its ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from node.feeds.hl7v2.convert import ConversionOptions
from node.feeds.hl7v2.framing import MllpDecoder, frame
from node.feeds.hl7v2.receiver import MessageReceiver, Submit, decode_payload

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "mllp_listener",
    "send_mllp",
    "send_mllp_async",
    "start_mllp_server",
]

log = logging.getLogger("ipjms.node.mllp")

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB per message
DEFAULT_IDLE_TIMEOUT = 300.0  # seconds a silent connection is kept open
READ_CHUNK = 64 * 1024


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    receiver: MessageReceiver,
    max_message_bytes: int,
    idle_timeout: float,
) -> None:
    decoder = MllpDecoder(max_message_bytes)
    peer = writer.get_extra_info("peername")
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), idle_timeout)
            except TimeoutError:
                log.info("mllp connection from %s idle, closing", peer)
                break
            if not data:
                break
            for item in decoder.feed(data):
                if item.oversize:
                    ack = receiver.oversize(max_message_bytes)
                else:
                    ack = await receiver.receive(item.payload)
                writer.write(frame(ack.encode("utf-8")))
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        log.info("mllp connection from %s dropped", peer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start_mllp_server(
    host: str,
    port: int,
    submit: Submit,
    *,
    options: ConversionOptions | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> asyncio.Server:
    """Listen for MLLP on host:port; every valid message's Bundle goes to ``submit``."""
    receiver = MessageReceiver(submit, options=options)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, receiver, max_message_bytes, idle_timeout)

    server = await asyncio.start_server(on_connect, host, port)
    log.info("mllp listening on %s", [s.getsockname() for s in server.sockets])
    return server


@contextlib.asynccontextmanager
async def mllp_listener(
    host: str,
    port: int,
    submit: Submit,
    *,
    options: ConversionOptions | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> AsyncIterator[asyncio.Server]:
    """Run the listener for the duration of the block (for the node app's lifespan)."""
    server = await start_mllp_server(
        host,
        port,
        submit,
        options=options,
        max_message_bytes=max_message_bytes,
        idle_timeout=idle_timeout,
    )
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def _read_ack(decoder: MllpDecoder, chunk: bytes) -> str | None:
    frames = decoder.feed(chunk)
    return decode_payload(frames[0].payload) if frames else None


def send_mllp(host: str, port: int, message: str, *, timeout: float = 10.0) -> str:
    """Send one message over MLLP and return the ACK text (blocking)."""
    payload = frame(message.replace("\n", "\r").encode("utf-8"))
    decoder = MllpDecoder()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        while True:
            chunk = sock.recv(READ_CHUNK)
            if not chunk:
                raise ConnectionError("connection closed before the ACK arrived")
            if (ack := _read_ack(decoder, chunk)) is not None:
                return ack


async def send_mllp_async(host: str, port: int, message: str, *, timeout: float = 10.0) -> str:
    """Send one message over MLLP and return the ACK text."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    decoder = MllpDecoder()
    try:
        writer.write(frame(message.replace("\n", "\r").encode("utf-8")))
        await writer.drain()
        while True:
            chunk = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            if not chunk:
                raise ConnectionError("connection closed before the ACK arrived")
            if (ack := _read_ack(decoder, chunk)) is not None:
                return ack
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
