"""servicekit.http_serving.QuietServer: uvicorn's housekeeping tick once a second instead of
ten times, with nothing it does lost — each tick refreshes the Date header (uvicorn did so on
every tenth), and SIGTERM/SIGINT wake the loop instead of waiting for the next tick."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvicorn

from servicekit.http_serving import QuietServer


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called
    raise AssertionError


def _server() -> QuietServer:
    server = QuietServer(uvicorn.Config(_app, log_config=None))
    server.config.load()
    return server


def test_each_tick_is_a_whole_second_tick_and_the_last_one_sees_the_exit() -> None:
    server = _server()
    ticks: list[int] = []
    on_tick = server.on_tick

    async def spy(counter: int) -> bool:
        ticks.append(counter)
        if len(ticks) == 2:
            server.should_exit = True
        return await on_tick(counter)

    server.on_tick = spy  # type: ignore[method-assign]
    asyncio.run(server.main_loop())
    assert ticks == [0, 10]  # uvicorn refreshes the Date header when counter % 10 == 0
    assert any(name == b"date" for name, _ in server.server_state.default_headers)


def test_a_signal_wakes_the_waiting_loop() -> None:
    server = _server()

    async def run() -> bool:
        loop_task = asyncio.create_task(server.main_loop())
        while server._wake is None:  # the loop is waiting for its next tick
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        server.handle_exit(signal.SIGTERM, None)
        woken = server._wake.is_set() or await _set_soon(server._wake)
        await loop_task
        return woken

    assert asyncio.run(run())
    assert server.should_exit


async def _set_soon(event: asyncio.Event) -> bool:
    """call_soon_threadsafe runs the set on the loop's next turn."""
    await asyncio.sleep(0)
    return event.is_set()
