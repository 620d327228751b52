"""``ipjms up --config network.toml``: the Compose topology as processes on one machine, with
PostgreSQL behind every service.

It is the demo's bring-up (the chapters' ``start`` functions, :mod:`deploy.demo.story`) with a
topology and database URLs from ``network.toml`` instead of the built-in three nodes on SQLite:
one database per service (``<prefix>consent``, ``<prefix>coordinator``,
``<prefix>node_<org>``), created on the configured server when missing.

``[postgres] managed = true`` runs a PostgreSQL of its own under the work dir, TLS only
(deploy/local_postgres.py); ``[tls] enabled = true`` serves every node, the registry and the
coordinator's status API over HTTPS with the organisations' certificates, and ends a
``--run-story`` with a check that every hop refuses a plaintext client (deploy/demo/tls_check.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console

from deploy.up_config import ConfigError, NetworkConfig, load_config

# The regional CA's folder under the work dir (the trust chapter uses the same one).
CA_SUBDIR = Path("pki") / "ca"
CA_NAME = "IPJMS Demo Regional CA"

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
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    if cfg.tls or cfg.managed:
        ca_dir = _regional_ca(workdir)
        if cfg.tls:  # every HTTPS client of the network (here and in each service) trusts it
            os.environ["SSL_CERT_FILE"] = str(ca_dir / "ca.cert.pem")
    server = None
    try:
        if cfg.managed:
            try:
                server = _start_managed_postgres(workdir, ca_dir)
            except Exception as exc:
                err.print(f"[red]error:[/red] cannot run the managed PostgreSQL ({exc})")
                raise typer.Exit(1) from None
            cfg = cfg.with_server(server.url, server.password_file)
            console.print(f"  PostgreSQL (managed, TLS only) on 127.0.0.1:{server.port}")
        if cfg.password_file is not None:  # each service reads it per connection
            os.environ["IPJMS_DB_PASSWORD_FILE"] = str(cfg.password_file)
        try:
            databases = ensure_databases(cfg)
        except Exception as exc:
            err.print(
                f"[red]error:[/red] cannot prepare the databases on postgres.server "
                f"({type(exc).__name__}: {str(exc).strip()[:300]})"
            )
            raise typer.Exit(1) from None
        net = DemoNetwork(
            workdir=workdir,
            console=console,
            node_specs=tuple(n.as_tuple() for n in cfg.nodes),
            db_urls={service: url for service, (url, _new) in databases.items()},
            fl_rounds=fl_rounds,
            tls=cfg.tls,
        )
        if cfg.password_file is not None:
            net.facts["db_password"] = cfg.password_file.read_text().strip()
        console.print(f"[bold]ipjms up[/bold] — {config}, state under {net.workdir}")
        for service, (url, created) in databases.items():
            shown = urlsplit(url).path.lstrip("/")
            console.print(f"  {service}: database {shown} ({'created' if created else 'exists'})")
        steps = chapters()
        if not run_story:
            steps = steps[: len(START_ORDER)]
        elif cfg.tls:
            from deploy.demo import tls_check

            steps.append(tls_check.run)
        ok = run_network(net, steps, keep_running=keep_running or not run_story)
    finally:
        if server is not None:
            server.stop()
    if not ok or (run_story and not net.results):
        raise typer.Exit(1)


def _regional_ca(workdir: Path) -> Path:
    """The region's CA, made before any service (the trust chapter then finds it)."""
    from deploy.demo.regional_ca import ensure_ca

    ca_dir = workdir / CA_SUBDIR
    ensure_ca(ca_dir, name=CA_NAME)  # its key encrypted, the passphrase beside the CA folder
    return ca_dir


def _start_managed_postgres(workdir: Path, ca_dir: Path):  # type: ignore[no-untyped-def]
    """The work dir's own PostgreSQL, TLS only, its certificate from the regional CA."""
    from deploy.demo.regional_ca import issue
    from deploy.local_postgres import LocalPostgres
    from servicekit.ports import free_port

    state = workdir / "postgres"
    tls = state / "tls"
    if not (tls / "tls.cert.pem").exists():
        issue(ca_dir, "org-region-database", host="127.0.0.1,localhost", out_dir=tls)
    server = LocalPostgres.prepare(
        state,
        ca_dir=ca_dir,
        port=free_port(),
        server_cert=tls / "tls.cert.pem",
        server_key=tls / "tls.key.pem",
    )
    server.start()
    return server
