"""``ipjms fl …``: federated training across the nodes (Flower + DP-SGD).

- ``ipjms fl superlink``  the authority's SuperLink (TLS, SuperNode authentication)
- ``ipjms fl authorize``  admit an organisation's SuperNode (its PKI signing key) to the SuperLink
- ``ipjms fl supernode``  a node's SuperNode (sibling of ``ipjms node serve``) on its own store
- ``ipjms fl run``        start a run and follow it to the end
- ``ipjms fl indicators`` regional quality indicators: a DP analytics run over the same nodes
- ``ipjms fl score``      score a node's patients with a published model (RiskAssessment)
- ``ipjms fl bench``      local vs federated vs DP vs pooled on one CSV per centre

Heavy imports (torch, flwr) stay inside the commands.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from servicekit.ports import announce_ports, free_port

app = typer.Typer(no_args_is_help=True)
console = Console()

DataDir = Annotated[Path, typer.Option("--data-dir", help="This service's state directory.")]


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def superlink(
    data_dir: DataDir,
    org_dir: Annotated[Path, typer.Option("--org-dir", help="The authority's PKI credentials.")],
    port: Annotated[
        int,
        typer.Option(
            "--port",
            help="Health endpoint port (HTTP /healthz; 0: any free one, in bound-ports.json).",
        ),
    ] = 9090,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    fleet_port: Annotated[int, typer.Option("--fleet-port")] = 9092,
    control_port: Annotated[int, typer.Option("--control-port")] = 9093,
    control_host: Annotated[
        str,
        typer.Option(
            "--control-host",
            help="Control API bind address (it starts training runs): loopback by default, so "
            "only the authority's operator (exec / port-forward into this host) reaches it.",
        ),
    ] = "127.0.0.1",
    serverappio_port: Annotated[int, typer.Option("--serverappio-port")] = 0,
    authorize: Annotated[
        list[Path] | None,
        typer.Option(
            "--authorize", help="An organisation credentials dir (or its public part) to admit."
        ),
    ] = None,
) -> None:
    """Run the authority's Flower SuperLink with TLS and SuperNode authentication."""
    from federated.deployment import flwr_env, superlink_args, write_connection
    from federated.supervisor import Supervised, port_open
    from trust.pki import load_org

    creds_dir = org_dir
    if not (creds_dir / "org.json").exists():
        _fail(f"--org-dir {org_dir}: no organisation credentials (run ipjms pki issue)")
    creds = load_org(creds_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tls = data_dir / "tls"
    tls.mkdir(exist_ok=True)
    (tls / "ca.pem").write_bytes(creds.ca_cert_pem)
    (tls / "cert.pem").write_bytes(creds.tls_cert_pem)
    key = tls / "key.pem"
    key.touch(mode=0o600)
    key.write_bytes(creds.tls_key_pem)
    flwr_home = data_dir / "flwr"
    fleet = f"{host}:{fleet_port}"
    control = f"{control_host}:{control_port}"
    serverappio = f"127.0.0.1:{serverappio_port or free_port()}"
    # Local Control API clients (--authorize, `fl authorize|run`) verify the certificate's name:
    # a wildcard bind is reached on loopback (the authority certificate names 127.0.0.1).
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(  # noqa: S104
        control_host, control_host
    )
    write_connection(flwr_home, f"{local}:{control_port}", tls / "ca.pem")
    (data_dir / "superlink.json").write_text(
        json.dumps({"fleet": fleet, "control": control, "org_id": creds.org_id})
    )
    args = superlink_args(
        ca_cert=tls / "ca.pem",
        tls_cert=tls / "cert.pem",
        tls_key=key,
        fleet_address=fleet,
        control_address=control,
        serverappio_address=serverappio,
        database=data_dir / "superlink.db",
    )
    log = _service_logging("superlink")
    sup = Supervised(
        args,
        env=flwr_env(flwr_home),
        logger=logging.getLogger("flower.superlink"),
        ready=lambda: port_open(fleet) and port_open(control),
        health_host=host,
        health_port=port,
        info={"service": "superlink", "fleet": fleet, "control": control},
    )
    announce_ports(data_dir, http=int(sup.http.server_address[1]))  # the health port it got
    log.info("SuperLink: fleet %s, control %s (TLS, SuperNode auth on)", fleet, control)
    deadline = time.monotonic() + 60
    while not (port_open(fleet) and port_open(control)):
        if sup.proc.poll() is not None or time.monotonic() > deadline:
            sup.stop_group()
            log.error("SuperLink did not start (its output is logged above)")
            raise typer.Exit(1)
        time.sleep(0.2)
    try:
        for org in authorize or []:
            _authorize(data_dir, org, say=log.info)
    except BaseException:
        sup.stop_group()
        raise
    raise typer.Exit(sup.wait())


def _service_logging(service: str) -> logging.Logger:
    """A long-running ``fl`` service logs JSON lines on stderr like every IPJMS service."""
    from servicekit.logging_setup import configure_logging

    configure_logging(service)
    return logging.getLogger(f"ipjms.federated.{service}")


def _authorize(data_dir: Path, org_dir: Path, say: Callable[[str], object] = console.print) -> str:
    from federated.deployment import register_supernode, ssh_public_key_of_org

    ca = (data_dir / "tls" / "ca.pem").read_bytes()
    try:
        org_id, ssh = ssh_public_key_of_org(org_dir, ca)
    except Exception as exc:  # noqa: BLE001
        _fail(f"{org_dir}: not admitted: {exc}")
    keys = data_dir / "supernode-keys"
    keys.mkdir(exist_ok=True)
    pub = keys / f"{org_id}.pub"
    pub.write_bytes(ssh + b"\n")
    node_id = register_supernode(data_dir / "flwr", pub)
    registry = data_dir / "supernodes.json"
    known = json.loads(registry.read_text()) if registry.exists() else {}
    known[org_id] = node_id
    registry.write_text(json.dumps(known, indent=2))
    say(f"admitted SuperNode of {org_id} (Flower node {node_id})")
    return node_id


@app.command()
def authorize(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The SuperLink's data dir.")],
    org_dir: Annotated[
        Path, typer.Option("--org-dir", help="The node organisation's credentials.")
    ],
) -> None:
    """Admit an organisation's SuperNode: verify its signing certificate against the CA and
    register the key with the running SuperLink."""
    _authorize(data_dir, org_dir)


@app.command()
def supernode(
    data_dir: DataDir,
    superlink: Annotated[str, typer.Option("--superlink", help="SuperLink Fleet API host:port.")],
    org_dir: Annotated[Path, typer.Option("--org-dir", help="This node's PKI credentials.")],
    fhir_url: Annotated[str, typer.Option("--fhir-url", help="This node's own API base URL.")],
    client_id: Annotated[str, typer.Option("--client-id", help="Backend client id at the node.")],
    client_key: Annotated[Path, typer.Option("--client-key", help="Backend client EC key (PEM).")],
    consent_url: Annotated[str, typer.Option("--consent-url")],
    authority: Annotated[str, typer.Option("--authority", help="The authority's org id.")],
    linkage_key: Annotated[
        Path | None, typer.Option("--linkage-key", help="An older region's shared HMAC key.")
    ] = None,
    pseudonym_url: Annotated[
        str | None,
        typer.Option("--pseudonym-url", help="The pseudonymisation authority (no key here)."),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            help="Health endpoint port (HTTP /healthz; 0: any free one, in bound-ports.json).",
        ),
    ] = 9095,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    epsilon_budget: Annotated[float, typer.Option("--epsilon-budget", min=0.0)] = 10.0,
    min_cohort: Annotated[int, typer.Option("--min-cohort", min=0)] = 50,
    max_epsilon_run: Annotated[
        float,
        typer.Option("--max-epsilon-run", help="Largest ε per patient one run may spend here."),
    ] = 3.0,
    delta_run: Annotated[float, typer.Option("--delta-run", help="δ of every run.")] = 1e-5,
    delta_budget: Annotated[float, typer.Option("--delta-budget")] = 1e-4,
    as_of: Annotated[
        str, typer.Option("--as-of", help="Cohort reference date (default now).")
    ] = "",
    indicators_max_epsilon: Annotated[
        float,
        typer.Option("--indicators-max-epsilon", help="Largest ε one indicator query may use."),
    ] = 3.0,
    indicators_min_count: Annotated[
        int,
        typer.Option("--indicators-min-count", help="This node never releases smaller cells."),
    ] = 10,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            help="Seconds between the SuperNode's heartbeats as announced to the SuperLink, "
            "10–1800 (Flower's default 30): the SuperLink takes the node offline after twice "
            "this without one, so a lost SuperNode is dropped from a round, and may rejoin, "
            "that much sooner.",
        ),
    ] = 30.0,
) -> None:
    """Run this node's Flower SuperNode: trains on this node's store, under its own rules."""
    from federated.clientapp_zygote import write_launcher, zygote_command, zygote_socket_path
    from federated.deployment import flwr_env, supernode_args, write_supernode_key
    from federated.supervisor import Supervised, port_open
    from trust.pki import load_signing_identity

    if epsilon_budget <= 0 or max_epsilon_run <= 0:
        _fail("--epsilon-budget and --max-epsilon-run must be positive")
    if not (0 < delta_run < 1 and 0 < delta_budget < 1):
        _fail("--delta-run and --delta-budget must be in (0, 1)")
    if indicators_max_epsilon <= 0 or indicators_min_count < 1:
        _fail("--indicators-max-epsilon must be positive and --indicators-min-count at least 1")
    from federated.flower_supernode import check_interval

    if problem := check_interval(heartbeat_interval):
        _fail(f"--heartbeat-interval: {problem}")
    if not (org_dir / "org.json").exists():
        _fail(f"--org-dir {org_dir}: no organisation credentials")
    if (linkage_key is None) == (not pseudonym_url):
        _fail("give exactly one of --pseudonym-url (the authority's OPRF) and --linkage-key")
    for p, opt in ((client_key, "--client-key"), (linkage_key, "--linkage-key")):
        if p is not None and not p.exists():
            _fail(f"{opt} {p}: no such file")
    # the signing key only: no TLS or encryption key needs to be mounted into a SuperNode
    creds = load_signing_identity(org_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = write_supernode_key(creds, data_dir / "supernode-auth.key")
    ca = data_dir / "ca.pem"
    ca.write_bytes(creds.ca_cert_pem)
    clientappio = f"127.0.0.1:{free_port()}"
    node_config = {
        "org-id": creds.org_id,
        "source": "fhir",
        "fhir-url": fhir_url,
        "client-id": client_id,
        "client-key": str(client_key.resolve()),
        "consent-url": consent_url,
        "authority": authority,
        "org-dir": str(org_dir.resolve()),
        **({"linkage-key": str(linkage_key.resolve())} if linkage_key else {}),
        **({"pseudonym-url": pseudonym_url} if pseudonym_url else {}),
        "data-dir": str(data_dir.resolve()),
        "epsilon-budget": float(epsilon_budget),
        "min-cohort": int(min_cohort),
        # the node's own privacy policy (federated/node_policy.py); the server cannot change it
        "dp-required": True,
        "max-epsilon-run": float(max_epsilon_run),
        "delta-run": float(delta_run),
        "delta-budget": float(delta_budget),
        "indicators-max-epsilon": float(indicators_max_epsilon),
        "indicators-min-count": int(indicators_min_count),
        **({"as-of": as_of} if as_of else {}),
    }
    args = supernode_args(
        superlink=superlink,
        ca_cert=ca,
        auth_key=key,
        node_config=node_config,
        clientappio_address=clientappio,
        heartbeat_interval=heartbeat_interval,
    )
    log = _service_logging("supernode")
    env = flwr_env(data_dir / "flwr")
    zygote = zygote_socket_path(data_dir)
    if zygote.exists():
        zygote.unlink()  # a stale socket from an earlier start must not count as ready
    # The SuperExec finds the launcher first on PATH: each ClientApp is forked from the warm
    # zygote instead of importing torch and Opacus afresh (federated/clientapp_zygote.py).
    launcher_dir = write_launcher(data_dir / "bin", zygote).parent
    env["PATH"] = f"{launcher_dir}{os.pathsep}{env['PATH']}"
    sup = Supervised(
        args,
        env=env,
        logger=logging.getLogger("flower.supernode"),
        ready=lambda: port_open(clientappio) and zygote.exists(),
        health_host=host,
        health_port=port,
        info={"service": "supernode", "org": creds.org_id},
        companions=[zygote_command(zygote)],
    )
    announce_ports(data_dir, http=int(sup.http.server_address[1]))  # the health port it got
    log.info("SuperNode of %s → %s (TLS, authenticated)", creds.org_id, superlink)
    raise typer.Exit(sup.wait())


STATUS_POLL_SECONDS = 10.0


@app.command()
def run(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The SuperLink's data dir.")],
    task: Annotated[str, typer.Option("--task")] = "readmission-30d",
    rounds: Annotated[int, typer.Option("--rounds")] = 5,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Target ε per node for the run.")
    ] = 3.0,
    strategy: Annotated[str, typer.Option("--strategy", help="fedavg | fedadam")] = "fedavg",
    min_nodes: Annotated[int, typer.Option("--min-nodes")] = 2,
    model: Annotated[str, typer.Option("--model", help="logreg | mlp")] = "logreg",
    lr: Annotated[float, typer.Option("--lr")] = 0.5,
    local_epochs: Annotated[int, typer.Option("--local-epochs")] = 2,
    min_cohort: Annotated[int, typer.Option("--min-cohort")] = 0,
    round_timeout: Annotated[float, typer.Option("--round-timeout")] = 300.0,
    node_wait: Annotated[float, typer.Option("--node-wait")] = 120.0,
    registry_url: Annotated[
        str, typer.Option("--registry-url", help="Coordinator HTTP base URL.")
    ] = "",
    authority_dir: Annotated[
        str, typer.Option("--authority-dir", help="Authority credentials.")
    ] = "",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Give up after this many seconds.")
    ] = 3600,
    label: Annotated[str, typer.Option("--label", help="Run label (default: generated).")] = "",
) -> None:
    """Start a federated run on the SuperLink and follow it until it completes or fails."""
    import tempfile
    import uuid

    from federated.run_plan import PlanError, RunPlan

    if epsilon <= 0:
        _fail(f"--epsilon must be positive (got {epsilon:g}): every federated run is DP-SGD")
    try:
        plan = RunPlan(
            task=task,
            rounds=rounds,
            epsilon=epsilon,
            strategy=strategy,
            min_nodes=min_nodes,
            model=model,
            lr=lr,
            local_epochs=local_epochs,
            min_cohort=min_cohort,
            round_timeout=round_timeout,
            node_wait=node_wait,
            run_label=label or f"run-{uuid.uuid4().hex[:12]}",
        )
    except PlanError as exc:
        _fail(str(exc))
    if task == "csv":
        _fail("task 'csv' is for ipjms fl bench only")
    if registry_url and not authority_dir:
        _fail("--registry-url needs --authority-dir (the authority's credentials)")
    if not (data_dir / "flwr" / "config.toml").exists():
        _fail(f"--data-dir {data_dir}: no SuperLink here (start ipjms fl superlink first)")
    from federated.deployment import build_app_dir, run_status, submit_run

    results = (data_dir / "runs").resolve()
    results.mkdir(parents=True, exist_ok=True)
    config = {
        **plan.to_run_config(),
        "results-dir": str(results),
        "registry-url": registry_url,
        "authority-dir": str(Path(authority_dir).resolve()) if authority_dir else "",
        "registry-ca": "",
        "publish": True,
    }
    with tempfile.TemporaryDirectory(prefix="ipjms-fab-") as tmp:
        app_dir = build_app_dir(Path(tmp) / "app", config)
        run_id = submit_run(data_dir / "flwr", app_dir, config)
    console.print(f"run {plan.run_label} started (Flower run {run_id})")
    progress = results / f"{plan.run_label}.log"
    outcome = results / f"{plan.run_label}.json"
    shown = 0
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    next_status = time.monotonic() + STATUS_POLL_SECONDS
    while True:
        if progress.exists():
            lines = progress.read_text().splitlines()
            for line in lines[shown:]:
                console.print(f"  {line}")
            shown = len(lines)
        if outcome.exists():
            doc = json.loads(outcome.read_text())
            if doc.get("status") == "completed":
                _summary(doc)
                return
            _fail(f"run {plan.run_label} failed: {doc.get('reason')}", code=1)
        # Flower's own view of the run, for a ServerApp that died without writing its outcome:
        # every 10 s, as each look is a `flwr ls` process (about a CPU-second).
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_POLL_SECONDS
            status = run_status(data_dir / "flwr", run_id)
        if str(status.get("status", "")).startswith("finished") and not outcome.exists():
            time.sleep(0.5)
            if not outcome.exists():
                _fail(
                    f"run {plan.run_label} ended without a result: {status.get('status')}", code=1
                )
        if time.monotonic() > deadline:
            _fail(f"run {plan.run_label} did not finish within {timeout:.0f}s", code=1)
        time.sleep(1.0)


def _summary(doc: dict[str, object]) -> None:
    from rich.table import Table

    card = doc["card"]
    assert isinstance(card, dict)
    table = Table(
        title=f"model {doc.get('model_id') or '(not stored)'}: "
        f"{card['task']} ({card['feature_spec']})"
    )
    for col in ("node", "cohort (rounded)", "rounds", "ε/patient", "δ", "σ", "q", "steps", "AUROC"):
        table.add_column(col)
    privacy = card.get("privacy") or {}
    dp = {d["org"]: d for d in privacy.get("per_node", [])}
    for p in card["participants"]:
        d = dp.get(p["org"], {})
        table.add_row(
            p["org"],
            str(p["cohort_size_rounded"]),
            ",".join(map(str, p["rounds"])),
            f"{p['epsilon'] or 0:.2f}",
            f"{p['delta'] or 0:.1e}",
            f"{d.get('noise_multiplier') or 0:.3f}",
            f"{d.get('sample_rate') or 0:.3f}",
            str(d.get("steps", "")),
            f"{(p['evaluation'] or {}).get('auroc') or float('nan'):.3f}",
        )
    console.print(table)
    if privacy.get("unit"):
        console.print(
            f"privacy unit: {privacy['unit']} (ε per patient = training + DP evaluation; "
            f"δ: {privacy.get('delta_rule')})"
        )
    ev = card["evaluation"]
    console.print(
        f"federated evaluation: AUROC {ev.get('auroc')}, AUPRC {ev.get('auprc')}, "
        f"Brier {ev.get('brier')}"
    )
    if card["dropped"]:
        console.print(f"dropped: {', '.join(sorted({d['org'] for d in card['dropped']}))}")


@app.command()
def indicators(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The SuperLink's data dir.")],
    out: Annotated[Path, typer.Option("--out", help="Write the result document (JSON) here.")],
    names: Annotated[
        str, typer.Option("--indicators", help="Comma-separated indicator ids (default: all).")
    ] = "",
    strata: Annotated[
        str, typer.Option("--strata", help="Breakdowns besides the total: age_band,sex,pathway.")
    ] = "",
    period_start: Annotated[
        str, typer.Option("--from", help="Period start (date, inclusive; default a year ago).")
    ] = "",
    period_end: Annotated[
        str, typer.Option("--to", help="Period end (date, exclusive; default tomorrow).")
    ] = "",
    epsilon: Annotated[float, typer.Option("--epsilon", help="ε per node, whole query.")] = 1.0,
    min_count: Annotated[int, typer.Option("--min-count", help="Suppress smaller cells.")] = 10,
    min_nodes: Annotated[int, typer.Option("--min-nodes")] = 1,
    node_wait: Annotated[float, typer.Option("--node-wait")] = 60.0,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    label: Annotated[str, typer.Option("--label", help="Run label (default: generated).")] = "",
) -> None:
    """Regional quality indicators: each node counts its consented (HQUALIMP) patients, adds
    discrete Laplace noise charged to its ε ledger and suppresses small cells; the authority
    publishes rates with ε, noise scale and 95 % intervals (JSON to --out)."""
    import tempfile
    import uuid
    from datetime import UTC, datetime, timedelta

    from federated.feature_spec import parse_instant
    from federated.indicators import IndicatorError, IndicatorQuery, Period, default_indicators
    from federated.indicators.authority_run import run_config

    defs = default_indicators()
    now = datetime.now(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    start = parse_instant(period_start) if period_start else today - timedelta(days=365)
    end = parse_instant(period_end) if period_end else today + timedelta(days=1)
    if start is None or end is None:
        _fail("--from/--to must be dates (YYYY-MM-DD)")
    if end <= start:
        _fail("--to must be after --from")
    if min_nodes < 1:
        _fail("--min-nodes must be at least 1")
    try:
        query = IndicatorQuery(
            indicators=tuple(x for x in names.split(",") if x) or defs.ids(),
            strata=tuple(x for x in strata.split(",") if x),
            period=Period(start, end),
            as_of=now,
            epsilon=epsilon,
            min_count=min_count,
            run_label=label or f"indicators-{uuid.uuid4().hex[:12]}",
        )
        query.check(defs)
    except IndicatorError as exc:
        _fail(str(exc))
    if not (data_dir / "flwr" / "config.toml").exists():
        _fail(f"--data-dir {data_dir}: no SuperLink here (start ipjms fl superlink first)")
    from federated.deployment import build_app_dir, run_status, submit_run

    results = (data_dir / "runs").resolve()
    results.mkdir(parents=True, exist_ok=True)
    config = run_config(
        query, results_dir=results, min_nodes=min_nodes, node_wait=node_wait, timeout=timeout
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ipjms-fab-") as tmp:
        app_dir = build_app_dir(Path(tmp) / "app", config)
        run_id = submit_run(data_dir / "flwr", app_dir, config)
    console.print(f"indicators run {query.run_label} started (Flower run {run_id})")
    outcome_path = results / f"{query.run_label}.json"
    next_status = time.monotonic() + STATUS_POLL_SECONDS
    while not outcome_path.exists():
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_POLL_SECONDS
            if str(run_status(data_dir / "flwr", run_id).get("status", "")).startswith("finished"):
                time.sleep(0.5)
                if not outcome_path.exists():
                    _fail(f"run {query.run_label} ended without a result", code=1)
        if time.monotonic() - started > timeout + node_wait + 60:
            _fail(f"run {query.run_label} did not finish in time", code=1)
        time.sleep(0.3)
    outcome = json.loads(outcome_path.read_text())
    if outcome.get("status") != "completed":
        _fail(f"run {query.run_label} failed: {outcome.get('reason')}", code=1)
    doc = outcome["result"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    from federated.indicators.report import format_report

    console.print(format_report(doc), markup=False, highlight=False)
    console.print(f"wall time {time.monotonic() - started:.1f}s; wrote {out}")


@app.command()
def score(
    node_url: Annotated[str, typer.Option("--node-url")],
    model: Annotated[str, typer.Option("--model", help="Model id in the registry.")],
    registry_url: Annotated[str, typer.Option("--registry-url")],
    org_dir: Annotated[Path, typer.Option("--org-dir", help="This node's credentials.")],
    client_id: Annotated[str, typer.Option("--client-id")],
    client_key: Annotated[Path, typer.Option("--client-key")],
    top: Annotated[
        int, typer.Option("--top", min=0, help="List the N highest-risk patients (0: none).")
    ] = 5,
    linkage_key: Annotated[
        Path | None, typer.Option("--linkage-key", help="Show patients by regional pseudonym.")
    ] = None,
    pseudonym_url: Annotated[
        str | None,
        typer.Option("--pseudonym-url", help="…their pseudonyms from the authority's OPRF."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the authority's pseudonyms here (pseudonyms.db, 0600) so a next run asks "
            "it nothing for known patients; the node's SuperNode --data-dir shares its store. "
            "Without it: memory only.",
        ),
    ] = None,
) -> None:
    """Score every patient at a node with a published model; store RiskAssessment resources."""
    from federated.scoring import score_node
    from trust.pseudonym import load_or_create_linkage_key

    if linkage_key is not None and not linkage_key.exists():
        _fail(f"--linkage-key {linkage_key}: no such file")
    try:
        summary = score_node(
            node_url=node_url,
            model_id=model,
            registry_url=registry_url,
            org_dir=org_dir,
            client_id=client_id,
            client_key=client_key,
            linkage_key=load_or_create_linkage_key(linkage_key) if linkage_key else None,
            pseudonym_url=pseudonym_url,
            state_dir=data_dir,
        )
    except Exception as exc:  # noqa: BLE001
        _fail(f"scoring failed: {exc}", code=1)
    console.print(f"scored {summary.scored} patient(s); {summary.stored} RiskAssessment(s) stored")
    if top > 0:
        console.print(f"highest 30-day readmission risk (model {model}):")
    for pid, pseudo, risk in summary.top(top):
        who = f"pseudonym {pseudo[:16]}…" if pseudo else f"Patient/{pid}"
        console.print(f"  {who}  risk {risk:.3f}")


@app.command()
def bench(
    data: Annotated[Path, typer.Option("--data", help="Folder with one CSV per centre.")],
    label: Annotated[str, typer.Option("--label", help="Label column (positive when non-zero).")],
    na_values: Annotated[
        str, typer.Option("--na-values", help="Missing markers, comma-separated.")
    ] = "",
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.25,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    rounds: Annotated[int, typer.Option("--rounds")] = 10,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write rows as JSON here.")
    ] = None,
    group: Annotated[
        str,
        typer.Option("--group", help="Patient column (not a feature): split and DP per patient."),
    ] = "",
) -> None:
    """Local vs FedAvg vs FedAvg+DP (ε 1, 3, 8) vs FedAdam vs pooled, per centre + mean."""
    from dataclasses import replace

    from federated.bench import DEFAULT_PLAN, format_table, run_bench
    from federated.datasets import BenchInputError

    if not 0 < test_fraction < 1:
        _fail("--test-fraction must be between 0 and 1")
    if rounds < 1:
        _fail("--rounds must be at least 1")
    plan = replace(
        DEFAULT_PLAN, test_fraction=test_fraction, split_seed=seed, seed=seed, rounds=rounds
    )
    na = [v for v in na_values.split(",")] if na_values else None
    try:
        rows = run_bench(
            data,
            label,
            na_values=na,
            plan=plan,
            progress=lambda m: console.print(f"… {m}"),
            group=group or None,
        )
    except BenchInputError as exc:
        _fail(str(exc))
    console.print(format_table(rows))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.as_json() for r in rows], indent=2))
        console.print(f"wrote {json_out}")


if __name__ == "__main__":  # pragma: no cover
    app(sys.argv[1:])
