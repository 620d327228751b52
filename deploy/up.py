"""``ipjms up --config network.toml``: the Compose topology as processes on one machine, with
PostgreSQL behind every service.

It is the demo's bring-up (the chapters' ``start`` functions, :mod:`deploy.demo.story`) with a
topology and database URLs from ``network.toml`` instead of the built-in three nodes on SQLite:
one database per service (``<prefix>consent``, ``<prefix>coordinator``,
``<prefix>node_<org>``), created on the configured server when missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.up_config import ConfigError, NetworkConfig, load_config

__all__ = ["up", "ensure_databases"]


def _admin_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def ensure_databases(config: NetworkConfig) -> dict[str, tuple[str, bool]]:
    """Create each service's database if missing → {service: (url, created_now)}."""
    import psycopg
    from psycopg import sql

    out: dict[str, tuple[str, bool]] = {}
    password = config.password_file.read_text().strip() if config.password_file else None
    with psycopg.connect(
        _admin_url(config.server_url), autocommit=True, connect_timeout=10, password=password
    ) as c:
        for service in config.services():
            name = config.database_name(service)
            exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            out[service] = (config.database_url(service), exists is None)
    return out


def up(
    config: Annotated[Path, typer.Option("--config", help="The network.toml to bring up.")],
    workdir: Annotated[
        Path, typer.Option(help="State of every service (keys, PKI, logs) under this folder.")
    ] = Path("ipjms-network"),
    run_story: Annotated[
        bool, typer.Option("--run-story", help="Seed the nodes and run the demo story, then stop.")
    ] = False,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="With --run-story: stay up afterwards.")
    ] = False,
    fl_rounds: Annotated[
        int,
        typer.Option("--fl-rounds", min=1, help="With --run-story: rounds of federated training."),
    ] = 5,
) -> None:
    """Start the regional network (coordinator, consent registry, nodes …) on PostgreSQL."""
    from deploy.demo.network import DemoNetwork
    from deploy.demo.story import START_ORDER, chapters
    from deploy.demo_cli import run_network

    console = Console()
    err = Console(stderr=True)
    try:
        cfg = load_config(config)
        if run_story:
            cfg.check_story()
    except ConfigError as exc:
        err.print(f"[red]error in {config}:[/red] {exc}")
        raise typer.Exit(2) from None
    if cfg.password_file is not None:  # each service reads it per connection (servicekit.storage)
        os.environ["IPJMS_DB_PASSWORD_FILE"] = str(cfg.password_file)
    try:
        databases = ensure_databases(cfg)
    except Exception as exc:
        err.print(
            f"[red]error:[/red] cannot prepare the databases on postgres.server "
            f"({type(exc).__name__}: {str(exc).strip()[:300]})"
        )
        raise typer.Exit(1) from None
    workdir.mkdir(parents=True, exist_ok=True)
    net = DemoNetwork(
        workdir=workdir.resolve(),
        console=console,
        node_specs=tuple(n.as_tuple() for n in cfg.nodes),
        db_urls={service: url for service, (url, _new) in databases.items()},
        fl_rounds=fl_rounds,
    )
    console.print(f"[bold]ipjms up[/bold] — {config}, state under {net.workdir}")
    for service, (url, created) in databases.items():
        shown = url.rsplit("/", 1)[1]
        console.print(f"  {service}: database {shown} ({'created' if created else 'exists'})")
    steps = chapters()
    if not run_story:
        steps = steps[: len(START_ORDER)]
    ok = run_network(net, steps, keep_running=keep_running or not run_story)
    if not ok or (run_story and not net.results):
        raise typer.Exit(1)
