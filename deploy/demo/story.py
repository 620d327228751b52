"""The order of the demo story.

Each chapter is a module ``deploy/demo/chapter_<area>.py`` with two functions taking the
:class:`DemoNetwork`: ``start`` brings its services up (and records in ``net.facts`` what later
chapters need), ``run`` tells its part of the story through ``net.step``. Services start in
``START_ORDER`` (infrastructure before the nodes that connect to it); the story runs in
``RUN_ORDER``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from deploy.demo.network import DemoNetwork

Chapter = Callable[[DemoNetwork], None]

START_ORDER = ["trust", "consent", "exchange", "federated", "care", "web", "nodes", "indicators"]
RUN_ORDER = ["trust", "nodes", "consent", "exchange", "care", "web", "federated", "indicators"]


def _module(area: str) -> ModuleType:
    return importlib.import_module(f"deploy.demo.chapter_{area}")


def chapters() -> list[Chapter]:
    """All start() functions in START_ORDER, then all run() functions in RUN_ORDER."""
    # Imported here so each chapter's heavy dependencies load only when the demo runs.
    starts: list[Chapter] = [_module(a).start for a in START_ORDER]
    runs: list[Chapter] = [_module(a).run for a in RUN_ORDER]
    return starts + runs
