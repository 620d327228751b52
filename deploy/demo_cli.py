"""`ipjms demo`: start a whole regional network on loopback, run the story, stop."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from deploy.demo.network import DemoNetwork
    from deploy.demo.story import Chapter

# The network and story (httpx, the launcher, every service's client) are imported when `demo`
# runs, not when `ipjms` starts: every other sub-command (`ipjms pki …`, `ipjms node …`) starts
# without them.


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep all state (databases, keys, logs) under this folder."),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the network up until Ctrl-C.")
    ] = False,
    fl_rounds: Annotated[
        int, typer.Option("--fl-rounds", min=1, help="Rounds of the federated training run.")
    ] = 5,
) -> None:
    """Start a regional network on loopback, seed it, run the story, print what happened."""
    from rich.console import Console

    from deploy.demo.network import DemoNetwork
    from deploy.demo.story import chapters

    console = Console()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ipjms-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    net = DemoNetwork(workdir=workdir.resolve(), console=console, fl_rounds=fl_rounds)
    console.print(f"[bold]IPJMS demo[/bold] — state under {net.workdir}")
    try:
        ok = run_network(net, chapters(), keep_running=keep_running)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if not ok or not net.results:
        raise typer.Exit(1)


def run_network(net: DemoNetwork, steps: list[Chapter], *, keep_running: bool) -> bool:
    """Run chapter functions in order (``ipjms demo`` and ``ipjms up`` share this), print the
    summary, optionally stay up until Ctrl-C/SIGTERM, then stop every service. True when all
    went well."""
    from deploy.demo.network import StepFailed

    ok = True
    try:
        for step in steps:
            step(net)
    except StepFailed:
        ok = False
    except KeyboardInterrupt:
        ok = False
    finally:
        _summary(net, net.console)
        if ok and keep_running:
            net.console.print("Network is up. Press Ctrl-C to stop.")
            try:
                signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
                while all(s.alive() for s in net.services.values()):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        net.stop_all()
    return ok


def _summary(net: DemoNetwork, console: Console) -> None:
    from rich.table import Table

    table = Table(title="Demo steps")
    table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for title, passed, seconds, _err in net.results:
        table.add_row(
            title, "[green]ok[/green]" if passed else "[red]failed[/red]", f"{seconds:.2f}"
        )
    console.print(table)
    if net.urls:
        urls = Table(title="URLs")
        urls.add_column("what")
        urls.add_column("url")
        for what, url in net.urls.items():
            urls.add_row(what, url)
        console.print(urls)
