"""The order of the demo story. Each chapter is a function ``(net: DemoNetwork) -> None`` that
starts what it needs through ``net.start`` and reports through ``net.step``."""

from __future__ import annotations

from collections.abc import Callable

from deploy.demo.network import DemoNetwork

Chapter = Callable[[DemoNetwork], None]


def chapters() -> list[Chapter]:
    # Imported here so each chapter's heavy dependencies load only when the demo runs.
    chapters: list[Chapter] = []
    return chapters
