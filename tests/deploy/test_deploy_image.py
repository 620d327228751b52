"""The Dockerfile and its entrypoint: non-root, health-checked, CPU torch, and every command the
entrypoint runs exists with the flags it passes (checked against the real `ipjms` CLI)."""

from __future__ import annotations

import http.server
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from deploy_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    ENTRYPOINT,
    IMAGE_UID,
    REPO_ROOT,
    ca_passphrase,
    load_compose,
)

from deploy.launcher import free_port
from servicekit.ports import read_announced_ports

ROLES = ["node", "coordinator", "consent", "superlink", "supernode", "pseudonym", "pki-bootstrap"]


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, [(INSTRUCTION, arguments)])] with line continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stages.append((m.group(1) if m else "", [(instr, args)]))
        elif stages:
            stages[-1][1].append((instr, args))
    return stages


def test_dockerfile_runtime_stage_is_slim_non_root_and_health_checked() -> None:
    text = DOCKERFILE.read_text()
    stages = dockerfile_stages()
    names = [n for n, _ in stages]
    assert names[-1] == "runtime" and "builder" in names
    runtime = dict(stages)["runtime"]
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}\n", text)
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_UID), (
        "runtime must end as a non-root user"
    )
    assert any(i == "HEALTHCHECK" and "CMD" in a for i, a in runtime)
    entry = [a for i, a in runtime if i == "ENTRYPOINT"]
    assert entry == ['["ipjms-entrypoint"]']
    run_lines = " ".join(a for i, a in runtime if i == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in run_lines, f"runtime stage installs {tool}"
    copies = [a for i, a in runtime if i == "COPY"]
    assert any("--from=builder /opt/venv" in a for a in copies)
    assert all(a.startswith("--from=builder") or "entrypoint.sh" in a for a in copies)


def test_dockerfile_pins_cpu_torch_and_copies_existing_sources() -> None:
    builder = dict(dockerfile_stages())["builder"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in builder if i == "ARG" and "=" in a}
    assert args["TORCH_VERSION"] == "2.13.0"
    assert "download.pytorch.org/whl/cpu" in args["TORCH_PIP_ARGS"]
    # torch comes from the hash-locked requirements (test_deploy_hardening checks the lock), and
    # the build checks the lock pins the CPU build of TORCH_VERSION
    assert any(
        i == "RUN" and "--require-hashes" in a and "^torch==${TORCH_VERSION}+cpu " in a
        for i, a in builder
    )
    for i, a in builder:
        if i == "COPY" and not a.startswith("--"):
            for src in a.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"Dockerfile copies missing {src}"
    # every top-level package the wheel must contain is copied into the build
    for pkg in (
        "trust",
        "servicekit",
        "protos",
        "consent",
        "node",
        "coordinator",
        "federated",
        "deploy",
    ):
        assert any(i == "COPY" and a.startswith(f"{pkg} ") for i, a in builder), pkg


def test_dockerignore_keeps_state_and_secrets_out_of_the_build_context() -> None:
    lines = set(DOCKERIGNORE.read_text().split())
    for pattern in (".git", ".venv", "**/secrets", "**/*.key", "**/*.pem", "**/*.db", "ipjms-data"):
        assert pattern in lines, pattern
    # ...but the sources the Dockerfile copies are not excluded
    for needed in ("deploy", "trust", "pyproject.toml"):
        assert needed not in lines


def entrypoint_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the image: ipjms, python and the Flower binaries on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", **(env or {})}


def run_entrypoint(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = entrypoint_env(env)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        cwd=REPO_ROOT,
    )


def test_entrypoint_is_valid_sh_and_rejects_unknown_roles() -> None:
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    result = run_entrypoint("nonsense")
    assert result.returncode == 64 and "unknown role" in result.stderr
    result = run_entrypoint("node", env={"IPJMS_NODE_ORG_ID": ""})
    assert result.returncode == 64 and "IPJMS_NODE_ORG_ID" in result.stderr
    # issue 23: a packaged node never makes a linkage key: without the authority it does not start
    for role in ("node", "supernode"):
        result = run_entrypoint(role, env={
            "IPJMS_NODE_ORG_ID": "org-a", "IPJMS_ORG_DIR": "/o", "IPJMS_SUPERLINK_ADDRESS": "s:1",
            "IPJMS_FHIR_URL": "https://n", "IPJMS_FL_CLIENT_KEY_FILE": "/k",
            "IPJMS_NODE_CONSENT_URL": "https://c", "IPJMS_NODE_PSEUDONYM_URL": "",
        })  # fmt: skip
        assert result.returncode == 64 and "IPJMS_NODE_PSEUDONYM_URL" in result.stderr, role
    result = run_entrypoint(
        "pseudonym", env={"IPJMS_CA_DIR": "/ca", "IPJMS_PUBLIC_URL": "https://p"}
    )
    assert result.returncode == 64 and "IPJMS_PSEUDONYM_ALLOW" in result.stderr
    help_text = run_entrypoint("--help").stdout
    for role in ROLES:
        assert re.search(rf"^#?\s*{re.escape(role)}\s", help_text, re.MULTILINE), role


def entrypoint_commands() -> list[tuple[str, list[str], set[str]]]:
    """(role, `ipjms` sub-command words, --flags) for every ipjms command the entrypoint runs.

    Flags on the command's own line belong to it; flags added with `set -- …` inside a role's
    block belong to that role's final `exec ipjms …`."""
    text = re.sub(r"\\\n", " ", ENTRYPOINT.read_text())
    body = text.split('case "$role" in', 1)[1]
    found = []
    for m in re.finditer(r"^([a-z][\w-]*)\)\n(.*?)^\s*;;", body, re.MULTILINE | re.DOTALL):
        role, block = m.group(1), m.group(2)
        pending: set[str] = set()
        for line in block.splitlines():
            line = line.strip()
            if line.startswith(("#", "echo")):
                continue
            flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line))
            if "$(db_args)" in line:
                flags.add("--db")
            call = re.search(
                r"(?<![\w/.-])(ipjms|flower-superlink|flower-supernode)\b(?!-)"
                r"(?: ([a-z][\w-]*))?(?: ([a-z][\w-]*))?(?: ([a-z][\w-]*))?",
                line,
            )
            if call and not line.startswith('exec ipjms "$@"'):
                words = [w for w in call.groups() if w]
                if line.startswith("exec"):
                    flags |= pending
                found.append((role, words, flags))
            elif line.startswith(("set --", "[ -n")) and "set --" in line:
                pending |= flags
    return found


def click_command(path: list[str]) -> click.Command:
    from deploy.cli import app

    cmd: click.Command = typer.main.get_command(app)
    for word in path:
        assert isinstance(cmd, click.Group), f"ipjms {' '.join(path)}: {word} is not a group"
        sub = cmd.get_command(click.Context(cmd), word)
        assert sub is not None, f"`ipjms {' '.join(path)}` does not exist"
        cmd = sub
    return cmd


def test_every_command_the_entrypoint_runs_exists_with_its_flags() -> None:
    commands = entrypoint_commands()
    roles = {role for role, _, _ in commands}
    assert set(ROLES) <= roles, f"roles without a command: {set(ROLES) - roles}"
    for role, words, flags in commands:
        # pki-bootstrap runs flag-less commands; migrate passes its flags on ("$@")
        assert flags or role in ("pki-bootstrap", "migrate"), f"{role}: no flags (parser broken?)"
        if words[0] == "ipjms":
            cmd = click_command(words[1:])
            known = {opt for p in cmd.params for opt in p.opts if opt.startswith("--")}
        else:  # Flower's own binaries, installed beside this interpreter
            exe = Path(sys.executable).parent / words[0]
            help_text = subprocess.run(
                [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=True
            ).stdout
            known = set(re.findall(r"(--[a-z][a-z-]*)", help_text))
        missing = flags - known
        assert not missing, f"`{' '.join(words)}` has no {sorted(missing)}"


def test_pki_bootstrap_creates_credentials_once(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    env = {
        "IPJMS_PKI_CA_DIR": str(pki / "ca"),
        "IPJMS_PKI_ORGS_DIR": str(pki / "orgs"),
        "IPJMS_PKI_CA_PUBLIC_DIR": str(pki / "ca-public"),
        "IPJMS_PKI_SECRETS_DIR": str(pki / "secrets"),
        "IPJMS_PKI_DIRECTORY_DIR": str(pki / "directory"),
        "IPJMS_PKI_ORGS": "org-a=node-a org-b=node-b",
        "IPJMS_PKI_GENERATED": "node-a-db node-b-db",
        "IPJMS_PKI_SIGNING_DIR": str(pki / "signing"),
    }
    refused = run_entrypoint("pki-bootstrap", env=env)  # no CA passphrase: nothing is made
    assert refused.returncode == 64 and "IPJMS_CA_PASSPHRASE_FILE" in refused.stderr
    assert not pki.exists()
    env.update(ca_passphrase(tmp_path))
    first = run_entrypoint("pki-bootstrap", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    from trust.pki import load_org

    for org in ("org-a", "org-b"):
        creds = load_org(pki / "orgs" / org)
        assert creds.org_id == org
    # the CA key is encrypted, and the CA folder holds no organisation's key (they sent requests)
    assert (pki / "ca" / "ca.key.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    ca_private = [p.name for p in (pki / "ca").rglob("*.pem") if b"PRIVATE KEY" in p.read_bytes()]
    assert ca_private == ["ca.key.pem"]
    # the SuperNode's folder: the signing identity alone, loadable as such
    from trust.pki import load_signing_identity

    for org in ("org-a", "org-b"):
        signing = pki / "signing" / org
        assert sorted(p.name for p in signing.iterdir()) == [
            "ca.cert.pem", "org.json", "signing.cert.pem", "signing.key.pem",
        ]  # fmt: skip
        assert load_signing_identity(signing).org_id == org
    assert sorted(p.name for p in (pki / "ca" / "requests").iterdir()) == [
        "org-a.request.pem",
        "org-b.request.pem",
    ]
    assert (pki / "ca-public" / "ca.cert.pem").read_bytes() == (
        pki / "ca" / "ca.cert.pem"
    ).read_bytes()
    assert not (pki / "ca-public" / "ca.key.pem").exists(), "the CA key must stay in the CA folder"
    for org in ("org-a", "org-b"):  # the directory copy holds public certificates only
        names = {p.name for p in (pki / "directory" / org).iterdir()}
        assert "tls.cert.pem" in names and not any(n.endswith(".key.pem") for n in names)
    secrets_before = {}
    for path in (pki / "secrets").glob("*/password"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
        secrets_before[path] = path.read_bytes()
    assert len(secrets_before) == 2
    assert len(set(secrets_before.values())) == 2
    # issue 23: no linkage key anywhere in the PKI volume (nodes ask the pseudonymisation
    # authority, whose OPRF key the authority makes itself)
    assert not [p for p in pki.rglob("*") if "linkage" in p.name], "a linkage key was made"
    cert_before = (pki / "orgs" / "org-a" / "tls.cert.pem").read_bytes()

    again = run_entrypoint("pki-bootstrap", env=env)  # a restart must not re-key the region
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in secrets_before} == secrets_before
    assert (pki / "orgs" / "org-a" / "tls.cert.pem").read_bytes() == cert_before


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)  # the OS picks, held from now on
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_healthcheck_role(health_server: int) -> None:
    assert run_entrypoint("healthcheck", env={"IPJMS_PORT": str(health_server)}).returncode == 0
    url = f"http://127.0.0.1:{health_server}/nothing"
    assert run_entrypoint("healthcheck", env={"IPJMS_HEALTH_URL": url}).returncode != 0
    # a port held bound but not listening: connections are refused, and no one else takes it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        closed = held.getsockname()[1]
        assert run_entrypoint("healthcheck", env={"IPJMS_PORT": str(closed)}).returncode != 0
        tcp = {"IPJMS_HEALTH_TCP": f"127.0.0.1:{health_server}"}
        assert run_entrypoint("healthcheck", env=tcp).returncode == 0
        closed_tcp = {"IPJMS_HEALTH_TCP": f"127.0.0.1:{closed}"}
        assert run_entrypoint("healthcheck", env=closed_tcp).returncode != 0


def test_compose_bootstrap_feeds_the_coordinator_directory(tmp_path: Path) -> None:
    """Run pki-bootstrap with the compose file's own settings, then parse the directory TOML it
    wrote (IPJMS_PKI_DIRECTORY_TOML, the file the coordinator registers at start) with the
    coordinator's parser against the certificates it wrote."""
    from coordinator.registration import records_from_toml

    compose = load_compose()
    boot_env = compose["services"]["pki-bootstrap"]["environment"]
    pki = tmp_path / "pki"
    env = {
        "IPJMS_PKI_ORGS": boot_env["IPJMS_PKI_ORGS"],
        "IPJMS_PKI_GENERATED": boot_env["IPJMS_PKI_GENERATED"],
        "IPJMS_PKI_DIRECTORY_TOML": boot_env["IPJMS_PKI_DIRECTORY_TOML"],
        **{
            f"IPJMS_PKI_{part.upper().replace('-', '_')}_DIR": str(pki / part)
            for part in ("ca", "orgs", "ca-public", "linkage", "secrets", "directory", "signing")
        },
        **ca_passphrase(tmp_path),
    }
    result = run_entrypoint("pki-bootstrap", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    content = (pki / "directory" / "directory.toml").read_text()
    mount = "/run/ipjms/directory"
    coordinator = compose["services"]["coordinator"]
    assert coordinator["environment"]["IPJMS_DIRECTORY_CONFIG"] == f"{mount}/directory.toml"
    assert any(
        isinstance(v, dict) and v["target"] == mount and v["volume"]["subpath"] == "directory"
        for v in coordinator["volumes"]
    )
    toml_path = tmp_path / "directory.toml"
    toml_path.write_text(content.replace(mount, str(pki / "directory")))
    records = records_from_toml(toml_path)
    node_orgs = {
        s["labels"]["ipjms.org"]
        for s in compose["services"].values()
        if s.get("labels", {}).get("ipjms.role") == "node"
    }
    assert node_orgs <= {r.org_id for r in records}
    generated = {p.parent.name for p in (pki / "secrets").glob("*/password")}
    assert generated == set(boot_env["IPJMS_PKI_GENERATED"].split())


def test_compose_bootstrap_gives_each_database_a_ca_signed_server_certificate(
    tmp_path: Path,
) -> None:
    """pki-bootstrap with the compose file's IPJMS_PKI_DB_SERVERS: each database gets a TLS
    server certificate for its host name, signed by the regional CA through the request flow
    (the key made in db-servers/NAME, never in the CA folder), and db-tls/NAME — what the
    database mounts — holds that certificate and key alone."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    compose = load_compose()
    names = compose["services"]["pki-bootstrap"]["environment"]["IPJMS_PKI_DB_SERVERS"].split()
    pki = tmp_path / "pki"
    env = {
        "IPJMS_PKI_ORGS": "org-authority=coordinator",
        "IPJMS_PKI_DB_SERVERS": " ".join(names),
        **{
            f"IPJMS_PKI_{part.upper().replace('-', '_')}_DIR": str(pki / part)
            for part in ("ca", "orgs", "ca-public", "linkage", "secrets", "directory", "signing")
        },
        "IPJMS_PKI_DB_SERVERS_DIR": str(pki / "db-servers"),
        "IPJMS_PKI_DB_TLS_DIR": str(pki / "db-tls"),
        **ca_passphrase(tmp_path),
    }
    result = run_entrypoint("pki-bootstrap", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    ca = x509.load_pem_x509_certificate((pki / "ca" / "ca.cert.pem").read_bytes())
    for name in names:
        folder = pki / "db-tls" / name
        assert sorted(f.name for f in folder.iterdir()) == ["tls.cert.pem", "tls.key.pem"]
        assert stat.S_IMODE((folder / "tls.key.pem").stat().st_mode) & 0o077 == 0
        cert = x509.load_pem_x509_certificate((folder / "tls.cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in dns.get_values_for_type(x509.DNSName)
        key = serialization.load_pem_private_key((folder / "tls.key.pem").read_bytes(), None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    ca_files = b"".join(f.read_bytes() for f in (pki / "ca").rglob("*") if f.is_file())
    assert b"BEGIN PRIVATE KEY" not in ca_files  # only the CA's own (encrypted) key is there


@pytest.mark.skipif(os.geteuid() != 0, reason="installs files owned by postgres (root only)")
def test_compose_database_settings_refuse_plaintext_on_a_real_server(tmp_path: Path) -> None:
    """No container engine here, so the Compose database's own pieces run on this machine's
    PostgreSQL: the certificate pki-bootstrap makes for coordinator-db, the database's entrypoint
    script (its paths pointed at a scratch folder, the image's docker-entrypoint.sh left out)
    and compose's `postgres` arguments. The key ends 0600 owned by postgres; a verify-full client
    (compose's URL parameters, host name coordinator-db) gets TLS; plaintext, another host name
    and another user are refused."""
    import pwd
    import shutil
    import uuid

    import psycopg

    from deploy.local_postgres import PostgresUnavailable, find_bin

    try:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    compose = load_compose()
    db = compose["services"]["coordinator-db"]
    url = compose["services"]["coordinator"]["environment"]["IPJMS_DB_URL"]
    pki = tmp_path / "pki"
    env = {
        "IPJMS_PKI_ORGS": "org-authority=coordinator",
        "IPJMS_PKI_DB_SERVERS": "coordinator-db",
        **{
            f"IPJMS_PKI_{part.upper().replace('-', '_')}_DIR": str(pki / part)
            for part in ("ca", "orgs", "ca-public", "linkage", "secrets", "directory", "signing")
        },
        "IPJMS_PKI_DB_SERVERS_DIR": str(pki / "db-servers"),
        "IPJMS_PKI_DB_TLS_DIR": str(pki / "db-tls"),
        **ca_passphrase(tmp_path),
    }
    boot = run_entrypoint("pki-bootstrap", env=env)
    assert boot.returncode == 0, boot.stderr
    # a folder the postgres user can reach (tmp_path sits in root's private tmp)
    root = Path(f"/var/tmp/ipjms-compose-pg-{uuid.uuid4().hex[:10]}")  # noqa: S108
    run_dir, data = root / "run", root / "data"
    root.mkdir(mode=0o755)
    port = free_port()
    try:
        script = db["entrypoint"][2]
        script = script.replace("/run/ipjms-pg", str(run_dir))
        script = script.replace("/run/ipjms/db-tls", str(pki / "db-tls" / "coordinator-db"))
        script = re.sub(r"exec docker-entrypoint\.sh .*", "exit 0", script)
        subprocess.run(["sh", "-ec", script, "postgres-tls"], check=True, timeout=30)
        key = (run_dir / "server.key").stat()
        assert stat.S_IMODE(key.st_mode) == 0o600
        assert key.st_uid == pwd.getpwnam("postgres").pw_uid
        password = "compose-drill-password"  # noqa: S105 - a throwaway server's password
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*as_postgres, initdb, "-D", str(data), "-U", "ipjms", "--pwfile", str(pwfile),
             "--auth", "scram-sha-256", "--no-instructions"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        args = [a.replace("/run/ipjms-pg", str(run_dir)) for a in db["command"][1:]]
        opts = " ".join([*args, "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                         "-c", f"unix_socket_directories={run_dir}"])  # fmt: skip
        started = subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-l", str(run_dir / "server.log"), "-w",
             "-t", "60", "-o", opts, "start"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        log = (run_dir / "server.log").read_text() if (run_dir / "server.log").exists() else ""
        assert started.returncode == 0, started.stderr + log
        with psycopg.connect(
            host=str(run_dir),
            port=port,
            user="ipjms",
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as conn:  # the container's own socket: the image's initialisation creates the database
            conn.execute("CREATE DATABASE ipjms")
        query = dict(q.partition("=")[::2] for q in url.split("?", 1)[1].split("&"))
        assert query["sslmode"] == "verify-full"
        tls = {
            "host": "coordinator-db", "hostaddr": "127.0.0.1", "port": port, "user": "ipjms",
            "password": password, "dbname": "ipjms", "sslmode": query["sslmode"],
            "sslrootcert": str(pki / "ca-public" / "ca.cert.pem"),
        }  # fmt: skip
        with psycopg.connect(**tls) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(**{**tls, "sslmode": "disable"})
        with pytest.raises(psycopg.OperationalError, match="does not match host name"):
            psycopg.connect(**{**tls, "host": "node-tertiary-db"})
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
            psycopg.connect(**{**tls, "user": "postgres"})
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(data), "-m", "immediate",
                 "-w", "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_crl_signer_re_signs_and_publishes_the_crl(tmp_path: Path) -> None:
    """The compose `crl-signer` role: one pass re-signs the CA's CRL (next cRLNumber, fresh
    nextUpdate) and publishes it to ca-public, where the services' verifiers accept it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from trust.pki import revocation_list

    pki = tmp_path / "pki"
    dirs = {
        f"IPJMS_PKI_{part.upper().replace('-', '_')}_DIR": str(pki / part)
        for part in ("ca", "orgs", "ca-public", "linkage", "secrets", "directory", "signing")
    }
    dirs.update(ca_passphrase(tmp_path))
    boot = run_entrypoint("pki-bootstrap", env={"IPJMS_PKI_ORGS": "org-a=127.0.0.1", **dirs})
    assert boot.returncode == 0, boot.stdout + boot.stderr

    def published() -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((pki / "ca-public" / "ca.crl.pem").read_bytes())

    before = published()
    number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    once = {"IPJMS_CRL_ONCE": "1", **dirs}
    recent = run_entrypoint("crl-signer", env={**once})  # issued just now: not re-signed
    assert recent.returncode == 0, recent.stdout + recent.stderr
    assert "not re-issued" in recent.stdout
    signed = run_entrypoint("crl-signer", env={**once, "IPJMS_CRL_REISSUE_AFTER_HOURS": "0"})
    assert signed.returncode == 0, signed.stdout + signed.stderr
    after = published()
    assert after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    assert after.next_update_utc > before.next_update_utc  # type: ignore[operator]
    assert (
        after.public_bytes(serialization.Encoding.PEM) == (pki / "ca" / "ca.crl.pem").read_bytes()
    )
    assert not list((pki / "ca-public").glob(".*"))  # published atomically, no temp file left
    revocation_list(pki / "ca-public")  # the verifiers' check accepts it


@pytest.fixture(scope="module")
def bootstrapped_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pki = tmp_path_factory.mktemp("pki")
    env = {
        "IPJMS_PKI_ORGS": "org-authority=127.0.0.1",
        **{
            f"IPJMS_PKI_{part.upper().replace('-', '_')}_DIR": str(pki / part)
            for part in ("ca", "orgs", "ca-public", "linkage", "secrets", "directory", "signing")
        },
        **ca_passphrase(pki / "secret"),
    }
    result = run_entrypoint("pki-bootstrap", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return pki


@pytest.mark.slow
def test_superlink_role_serves_tls_with_the_regional_certificate(
    bootstrapped_pki: Path, tmp_path: Path
) -> None:
    """The SuperLink role (`ipjms fl superlink`) serves the authority's certificate: it passes
    the image's health check and a client that trusts only the regional CA completes a TLS
    handshake with it. (Node, consent and coordinator roles: tests/deploy/test_deploy_region.py.)"""
    import ssl

    from deploy.launcher import wait_until

    refused = run_entrypoint("superlink", env={"IPJMS_ORG_DIR": ""})
    assert refused.returncode == 64 and "IPJMS_ORG_DIR" in refused.stderr  # never plaintext

    # Flower binds the Fleet and Control ports itself and cannot report a port 0: picked here
    # (free_port). The wrapper's health port is bound at 0 and announced in its data dir.
    fleet, control = free_port(), free_port()
    env = {
        "IPJMS_PORT": "0",
        "IPJMS_DATA_DIR": str(tmp_path / "superlink"),
        "IPJMS_FLEET_PORT": str(fleet),
        "IPJMS_CONTROL_PORT": str(control),
        "IPJMS_ORG_DIR": str(bootstrapped_pki / "orgs" / "org-authority"),
    }
    log = tmp_path / "superlink.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), "superlink"],
            env=entrypoint_env(env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"superlink exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            ports = read_announced_ports(tmp_path / "superlink")
            if ports is None:
                return False
            health = {"IPJMS_PORT": str(ports["http"])}  # the wrapper's HTTP /healthz
            return run_entrypoint("healthcheck", env=health).returncode == 0

        wait_until(healthy, timeout=90, interval=0.5, what="superlink to pass its health check")
        ctx = ssl.create_default_context(cafile=str(bootstrapped_pki / "ca-public" / "ca.cert.pem"))
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", fleet), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            assert subject["commonName"] == "org-authority"
        untrusting = ssl.create_default_context()  # system CAs only: must refuse
        with (
            socket.create_connection(("127.0.0.1", fleet), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def test_project_wheel_carries_every_runtime_file(tmp_path: Path) -> None:
    """The image installs the project as a wheel (not the source tree): every tracked file of the
    packages the services need at run time — migrations, templates, protos, data — must be in it."""
    import shutil
    import zipfile

    packages = [
        "node",
        "coordinator",
        "consent",
        "federated",
        "protos",
        "trust",
        "servicekit",
        "deploy",
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", *packages],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    src = tmp_path / "src"
    for rel in tracked:
        if (REPO_ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("ipjms-*.whl")
    contents = set(zipfile.ZipFile(wheel).namelist())
    not_runtime = (
        "README.md",
        "deploy/compose.yaml",
        "deploy/entrypoint.sh",
        "deploy/requirements.lock",
        "deploy/torch-cpu.override.txt",
    )  # build inputs
    missing = [
        rel
        for rel in tracked
        if rel.split("/")[0] in packages
        and not rel.endswith(not_runtime)
        and not rel.startswith(("deploy/k8s/", "deploy/helm/"))
        and rel not in contents
    ]
    assert not missing, f"not in the wheel the image installs: {missing}"
    assert "node/store/migrations/env.py" in contents
