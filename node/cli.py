"""`ipjms node …` sub-commands: init, serve, ingest, seed, generate, user add, client add, token."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
user_app = typer.Typer(no_args_is_help=True, help="Node accounts (doctor, nurse, admin, patient).")
client_app = typer.Typer(no_args_is_help=True, help="Registered backend clients (SMART Backend).")
app.add_typer(user_app, name="user")
app.add_typer(client_app, name="client")
smart_app_cli = typer.Typer(no_args_is_help=True, help="Registered SMART apps (App Launch).")
app.add_typer(smart_app_cli, name="app")

console = Console()
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The node's state folder.")]
DbUrl = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: SQLite in the data dir; postgresql://…)."),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _settings(data_dir: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    from node.settings import NotInitialised, load_settings

    if not data_dir.is_dir():
        _fail(f"data dir {data_dir} does not exist; run `ipjms node init --data-dir {data_dir}`")
    try:
        return load_settings(data_dir, require_init=True, **overrides)
    except NotInitialised as exc:
        _fail(str(exc))
    except Exception as exc:  # pydantic validation of node.toml / env
        _fail(f"bad node settings: {exc}")


def _open_store(settings):  # type: ignore[no-untyped-def]
    """Engine and store, every schema brought to head (``node/schemas.py``: the migrations the
    composition root runs at ``serve``, without importing the features' routers)."""
    from node.schemas import open_store

    try:
        return open_store(settings)
    except Exception as exc:
        _fail(f"cannot open the node database ({type(exc).__name__}: {exc})")


@app.command()
def init(
    org: Annotated[str, typer.Option("--org", help="Organisation id, e.g. org-tertiary.")],
    name: Annotated[str, typer.Option("--name", help="Human-readable node name.")],
    data_dir: DataDir,
    level: Annotated[
        str, typer.Option("--level", help="tertiary | county | community")
    ] = "community",
    db: DbUrl = None,
    port: Annotated[int | None, typer.Option("--port", help="Default HTTP port.")] = None,
) -> None:
    """Create a node: node.toml, database schema, token-signing and linkage keys, admin account.

    The admin password comes from IPJMS_ADMIN_PASSWORD, else one is generated and printed once.
    """
    from node.settings import NODE_TOML, load_settings, write_node_toml

    if level not in ("tertiary", "county", "community"):
        _fail(f"--level must be tertiary, county or community, not {level!r}")
    if (data_dir / NODE_TOML).exists():
        _fail(f"{data_dir} already holds a node ({NODE_TOML}); choose another --data-dir")
    # (imported after the checks: a refused init need not load the account store and the keys)
    from node.auth.accounts import AccountError, AccountStore
    from trust.pseudonym import load_or_create_linkage_key
    from trust.tokens import load_or_create_signing_key

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = load_settings(data_dir, org_id=org, name=name, level=level, db_url=db, port=port)
    except Exception as exc:
        _fail(f"bad settings: {exc}")
    engine, _store = _open_store(settings)
    load_or_create_signing_key(settings.signing_key_path)
    if not settings.pseudonym_url:  # with the authority's OPRF the node holds no linkage key
        load_or_create_linkage_key(settings.linkage_key_file)
    password = os.environ.get("IPJMS_ADMIN_PASSWORD")
    generated = not password
    if not password:
        password = secrets.token_urlsafe(18)
    try:
        AccountStore(engine).add_user("admin", password, "admin")
    except AccountError as exc:
        _fail(f"cannot create the admin account: {exc}")
    write_node_toml(settings)
    engine.dispose()
    console.print(f"Initialised node [bold]{org}[/bold] ({level}) in {settings.data_dir}")
    if generated:
        console.print(f"Admin account: admin / [bold]{password}[/bold]  (shown once; keep it)")
    else:
        console.print("Admin account: admin (password from IPJMS_ADMIN_PASSWORD)")


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    data_dir: DataDir,
    port: Annotated[
        int | None,
        typer.Option("--port", help="HTTP port (0: any free one, written to bound-ports.json)."),
    ] = None,
    db: DbUrl = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address.")] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, max=32, help="Worker processes (use the CPU cores)."),
    ] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate (chain)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            help="Its PEM private key (passphrase, if any, from IPJMS_TLS_KEY_PASSPHRASE).",
        ),
    ] = None,
) -> None:
    """Run the node's HTTP API (SIGTERM or Ctrl-C stops it gracefully).

    ``--tls-cert``/``--tls-key`` serve it over HTTPS, e.g. with the organisation's TLS
    certificate from the regional PKI (``<org dir>/tls.cert.pem``, ``tls.key.pem``)."""
    from node.app import create_app
    from servicekit.http_serving import serve_uvicorn
    from servicekit.logging_setup import configure_logging
    from servicekit.ports import announce_ports, bind_listener

    configure_logging("node")
    settings = _settings(data_dir, port=port, db_url=db, host=host)
    try:  # bound before the app is built: with --port 0 the OS picks, and the app knows it
        sock = bind_listener(settings.host, settings.port)
    except OSError as exc:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
    if settings.port == 0:
        settings = _settings(data_dir, port=sock.getsockname()[1], db_url=db, host=host)
    common: dict[str, Any] = {
        "log_level": "info",
        "log_config": None,  # servicekit.logging_setup: JSON lines, no PHI
        "access_log": False,  # request paths carry ids; metrics count routes instead
        "timeout_graceful_shutdown": 10,
        **_tls_options(tls_cert, tls_key),
    }
    if workers == 1:
        try:
            target: Any = create_app(settings)
        except Exception as exc:
            _fail(f"cannot start the node ({type(exc).__name__}: {exc})")
    else:
        from node.app import build_services

        try:  # migrate once and check the services can be built, before the workers start
            build_services(settings).close()
        except Exception as exc:
            _fail(f"cannot start the node ({type(exc).__name__}: {exc})")
        _export_for_workers(settings, data_dir)
        target, common["factory"] = "node.app:app_factory", True
    import logging

    logging.getLogger("ipjms.node").info(
        "node %s serving on %s://%s:%d",
        settings.org_id,
        "https" if tls_cert else "http",
        settings.host,
        settings.port,
    )
    announce_ports(data_dir, http=settings.port)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it: make that a clean exit (status 0), not death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    serve_uvicorn(sock, target, workers=workers, **common)


def _tls_options(cert: Path | None, key: Path | None) -> dict[str, Any]:
    """uvicorn's HTTPS settings, after checking both files are given and readable."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        _fail("--tls-cert and --tls-key go together")
    for path in (cert, key):
        if not path.is_file():
            _fail(f"TLS file not found: {path}")
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    passphrase = os.environ.get("IPJMS_TLS_KEY_PASSPHRASE")
    if passphrase:
        options["ssl_keyfile_password"] = passphrase
    return options


def _export_for_workers(settings: Any, data_dir: Path) -> None:
    """Worker processes rebuild their settings from the environment: pass the CLI overrides
    on, and give them one shared folder for Prometheus multiprocess metrics."""
    import shutil

    os.environ["IPJMS_NODE_DATA_DIR"] = str(data_dir.resolve())
    os.environ["IPJMS_NODE_PORT"] = str(settings.port)
    os.environ["IPJMS_NODE_HOST"] = settings.host
    if settings.db_url:
        os.environ["IPJMS_NODE_DB_URL"] = settings.db_url
    metrics_dir = data_dir.resolve() / "metrics-multiproc"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="FHIR JSON / NDJSON files or folders.")],
    data_dir: DataDir,
    db: DbUrl = None,
) -> None:
    """Load FHIR bundles, resources and NDJSON files (idempotent: twice adds nothing)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from node.ingest.driver import ingest_files
    from node.ingest.sources import IngestFileError, discover

    settings = _settings(data_dir, db_url=db)
    try:
        files = discover(paths)
    except IngestFileError as exc:
        _fail(str(exc))
    if not files:
        _fail("no .json or .ndjson files found in the given paths")
    engine, store = _open_store(settings)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task("ingesting", total=len(files))

        def on_file(path: Path, n: int) -> None:
            progress.update(task, description=f"{path.name} ({n} resources)")

        report = ingest_files(
            store, files, on_file=on_file, on_done=lambda _result: progress.advance(task)
        )
    engine.dispose()
    _print_summary(report)
    if report.failed:
        err.print(f"[red]{len(report.failed)} of {len(report.files)} file(s) failed:[/red]")
        for failed in report.failed:
            for message in failed.errors[:5]:
                err.print(f"  {message}")
            if len(failed.errors) > 5:
                err.print(f"  {failed.path.name}: … {len(failed.errors) - 5} more")
        raise typer.Exit(1)


def _print_summary(report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    created, existing = report.totals()
    table = Table(title=f"Ingested {len(report.files)} file(s)")
    table.add_column("resource type")
    table.add_column("created", justify="right")
    table.add_column("already present", justify="right")
    for rtype in sorted(set(created) | set(existing)):
        table.add_row(rtype, str(created[rtype]), str(existing[rtype]))
    table.add_row(
        "[bold]total[/bold]",
        f"[bold]{sum(created.values())}[/bold]",
        f"[bold]{sum(existing.values())}[/bold]",
    )
    console.print(table)


@app.command()
def seed(
    data_dir: DataDir,
    profile: Annotated[str, typer.Option("--profile", help="tertiary | community")],
    patients: Annotated[int, typer.Option("--patients", min=0, help="How many patients.")],
    seed: Annotated[int, typer.Option("--seed", help="Site seed (same seed, same data).")] = 0,
    shared: Annotated[
        int, typer.Option("--shared", min=0, help="How many are regional people (cross-site).")
    ] = 0,
    population_seed: Annotated[
        int, typer.Option("--population-seed", help="Seed of the regional population.")
    ] = 0,
    db: DbUrl = None,
) -> None:
    """Write a deterministic synthetic cohort (one transaction per patient; idempotent)."""
    from collections import Counter

    from rich.progress import Progress
    from rich.table import Table

    from node.feeds.synthetic import PROFILES, generate_site
    from servicekit.outcome import FhirError

    if profile not in PROFILES:
        _fail(f"--profile must be one of {', '.join(sorted(PROFILES))}, not {profile!r}")
    if shared > patients:
        _fail("--shared cannot exceed --patients")
    settings = _settings(data_dir, db_url=db)
    engine, store = _open_store(settings)
    created: Counter[str] = Counter()
    with Progress(console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(f"seeding {profile}", total=patients)
        for bundle in generate_site(
            profile, patients, seed, shared=shared, population_seed=population_seed
        ):
            try:
                response = store.transaction(bundle, writer=f"seed:{profile}")
            except FhirError as exc:
                engine.dispose()
                _fail(f"seeding failed: {exc.diagnostics}", code=1)
            for entry in response.get("entry") or []:
                resp = entry.get("response") or {}
                if str(resp.get("status", "")).startswith("201"):
                    created[str(resp.get("location", "?")).split("/")[0]] += 1
            progress.advance(task)
    counts = store.counts()
    engine.dispose()
    table = Table(title=f"Seeded {patients} {profile} patient(s) (seed {seed})")
    table.add_column("resource type")
    table.add_column("created now", justify="right")
    table.add_column("in store", justify="right")
    for rtype in sorted(set(created) | set(counts)):
        table.add_row(rtype, str(created[rtype]), str(counts.get(rtype, 0)))
    console.print(table)


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the Bundles into.")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="How many patients.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 100,
    profile: Annotated[str, typer.Option("--profile", help="tertiary | community")] = "tertiary",
) -> None:
    """Write generated patients as a Synthea-shaped export folder (input for `node ingest`)."""
    from node.feeds.synthetic import PROFILES
    from node.feeds.synthetic.synthea_shaped import synthea_shaped_export, write_export

    if profile not in PROFILES:
        _fail(f"--profile must be one of {', '.join(sorted(PROFILES))}, not {profile!r}")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    files = synthea_shaped_export(patients, seed, profile=profile)
    write_export(out, files)
    resources = sum(len(f.bundle["entry"]) for f in files)
    console.print(
        f"Wrote {len(files)} Synthea-shaped Bundles ({patients} generated {profile} patients, "
        f"{resources} resources, seed {seed}) to {out}"
    )


def _password(env_var: str, prompt: str) -> str:
    value = os.environ.get(env_var)
    if value:
        return value
    if not sys.stdin.isatty():
        _fail(f"set {env_var} or run interactively to type the password")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    data_dir: DataDir,
    username: Annotated[str, typer.Option("--username")],
    role: Annotated[str, typer.Option("--role", help="doctor | nurse | admin | patient")],
    patient: Annotated[
        str | None, typer.Option("--patient", help="Patient id (patient accounts only).")
    ] = None,
    db: DbUrl = None,
) -> None:
    """Add an account. Password from IPJMS_USER_PASSWORD, else prompted."""
    from node.auth.accounts import AccountError, AccountStore

    settings = _settings(data_dir, db_url=db)
    password = _password("IPJMS_USER_PASSWORD", f"Password for {username}")
    engine, _store = _open_store(settings)
    try:
        account = AccountStore(engine).add_user(username, password, role, patient_id=patient)
    except AccountError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    linked = f" linked to Patient/{account.patient_id}" if account.patient_id else ""
    console.print(f"Added {account.role} account {account.username}{linked}")


@client_app.command("add")
def client_add(
    data_dir: DataDir,
    client_id: Annotated[str, typer.Option("--client-id")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key", help="PEM file (or PEM text): EC P-256/P-384 or RSA ≥ 2048 bits."
        ),
    ] = None,
    jwks_url: Annotated[
        str | None, typer.Option("--jwks-url", help="Where the client publishes its keys.")
    ] = None,
    scope: Annotated[str, typer.Option("--scope", help='e.g. "system/*.rs"')] = "system/*.rs",
    db: DbUrl = None,
) -> None:
    """Register a SMART Backend Services client (its public key or JWKS URL, and allowed
    system scopes)."""
    from node.auth.accounts import AccountError, AccountStore

    settings = _settings(data_dir, db_url=db)
    if (public_key is None) == (jwks_url is None):
        _fail("give --public-key or --jwks-url (one of the two)")
    if public_key is None:
        pem = None
    elif public_key.lstrip().startswith("-----BEGIN"):
        pem = public_key
    else:
        key_path = Path(public_key)
        if not key_path.is_file():
            _fail(f"--public-key {public_key}: no such file")
        pem = key_path.read_text()
    engine, _store = _open_store(settings)
    try:
        client = AccountStore(engine).add_client(client_id, pem, scope, jwks_url=jwks_url)
    except AccountError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    console.print(f"Registered backend client {client.client_id} with {' '.join(client.scopes)}")
    console.print(f"Token URL (client assertion audience): {settings.base_url}/auth/token")


@smart_app_cli.command("add")
def smart_app_add(
    data_dir: DataDir,
    client_id: Annotated[str, typer.Option("--client-id")],
    redirect_uri: Annotated[
        list[str], typer.Option("--redirect-uri", help="Exact redirect URI (repeatable).")
    ],
    name: Annotated[str | None, typer.Option("--name", help="Shown on the sign-in page.")] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="Scopes the app may ask for.")
    ] = None,
    confidential: Annotated[
        bool, typer.Option("--confidential", help="A server-side app: print a client secret.")
    ] = False,
    launch_url: Annotated[
        str | None,
        typer.Option(
            "--launch-url",
            help="The app's launch URL: the doctor pages offer an EHR launch button for it.",
        ),
    ] = None,
    db: DbUrl = None,
) -> None:
    """Register a SMART app for the authorization-code flow (public unless --confidential)."""
    from node.auth.accounts import AccountError
    from node.auth.smart_apps import DEFAULT_APP_SCOPES, SmartAppStore

    settings = _settings(data_dir, db_url=db)
    engine, _store = _open_store(settings)
    try:
        registered, secret = SmartAppStore(engine).add_app(
            client_id,
            redirect_uri,
            name=name,
            scopes=scope or DEFAULT_APP_SCOPES,
            confidential=confidential,
            launch_url=launch_url,
        )
    except AccountError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    kind = "confidential" if registered.confidential else "public (PKCE only)"
    console.print(f"Registered {kind} SMART app {registered.client_id}")
    console.print(f"Discovery: {settings.base_url}/fhir/.well-known/smart-configuration")
    if secret:
        console.print(f"Client secret (shown once): {secret}")


@app.command()
def token(
    data_dir: DataDir,
    role: Annotated[str, typer.Option("--role", help="doctor | nurse | admin")] = "admin",
    subject: Annotated[str, typer.Option("--subject", help="Token subject.")] = "local-operator",
    ttl: Annotated[int | None, typer.Option("--ttl", help="Seconds (≤ 3600).")] = None,
    db: DbUrl = None,
) -> None:
    """Print an access token signed with the node's key (for local tools; needs the data dir)."""
    from node.auth.accounts import AccountStore
    from node.auth.roles import ROLE_SCOPES
    from node.auth.service import AuthService
    from servicekit.storage import make_engine
    from trust.tokens import load_or_create_signing_key

    if role not in ROLE_SCOPES or role == "patient":
        _fail("--role must be doctor, nurse or admin")
    if ttl is not None and not 0 < ttl <= 3600:
        _fail("--ttl must be 1..3600 seconds")
    settings = _settings(data_dir, db_url=db)
    engine = make_engine(settings.database_url)
    auth = AuthService(
        settings, AccountStore(engine), load_or_create_signing_key(settings.signing_key_path)
    )
    grant = auth.issue_local(subject, role, ttl=ttl)
    engine.dispose()
    typer.echo(grant.access_token)
