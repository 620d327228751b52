"""A small region wired exactly as the compose file wires it — pki-bootstrap's output, the
coordinator's directory config, mTLS between node and coordinator — but as processes started by
the image's entrypoint (no container engine runs here). SQLite keeps it fast; PostgreSQL is the
same code path with `IPJMS_DB_URL` set."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_files import ENTRYPOINT, ca_passphrase

from deploy.launcher import free_port, wait_until
from servicekit.ports import read_announced_ports

ORGS = "org-authority=127.0.0.1 org-consent=127.0.0.1 org-pseudonym=127.0.0.1 org-a=127.0.0.1"


def _env(extra: dict[str, str]) -> dict[str, str]:
    import sys

    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", **extra}


class Roles:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(ENTRYPOINT), role],
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, name: str, role: str, env: dict[str, str]) -> None:
        with open(self.workdir / f"{name}.log", "wb") as fh:
            self.procs[name] = subprocess.Popen(
                ["sh", str(ENTRYPOINT), role],
                env=_env(env),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def ports(self, name: str, data_dir: Path) -> dict[str, int]:
        """The ports a role started with port 0 bound (``<data dir>/bound-ports.json``)."""
        found: dict[str, int] = {}

        def announced() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
            found.update(read_announced_ports(data_dir) or {})
            return bool(found)

        # generous: a role announces after its imports (Flower's are slow on a loaded machine)
        wait_until(announced, timeout=180, interval=0.1, what=f"{name} to announce its ports")
        return found

    def wait_healthy(self, name: str, port: int) -> None:
        def ok() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
            return self.run("healthcheck", {"IPJMS_PORT": str(port)}).returncode == 0

        wait_until(ok, timeout=90, interval=0.5, what=f"{name} healthy")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[Roles]:
    r = Roles(tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.mark.slow
def test_region_from_entrypoint_roles_with_bootstrapped_credentials(
    roles: Roles, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    parts = ("ca", "orgs", "ca-public", "secrets", "directory", "signing")
    boot = roles.run(
        "pki-bootstrap",
        {
            "IPJMS_PKI_ORGS": ORGS,
            "IPJMS_PKI_GENERATED": "coordinator-db consent-db node-a-db node-a-admin",
            "IPJMS_PKI_CLIENT_KEYS": "node-a-fl",
            **{f"IPJMS_PKI_{p.upper().replace('-', '_')}_DIR": str(pki / p) for p in parts},
            **ca_passphrase(tmp_path / "secret"),
        },
    )
    assert boot.returncode == 0, boot.stdout + boot.stderr
    # Both ways the coordinator role takes its directory: one TOML (compose) for the authority,
    # and a folder of per-organisation entries (Kubernetes ConfigMaps) for org-a.
    directory = tmp_path / "directory.toml"
    directory.write_text(
        f"""
[[organisation]]
credentials = "{pki / "directory" / "org-authority"}"
name = "Regional Health Authority"
level = "authority"
"""
    )
    entries = tmp_path / "directory-entries"
    (entries / "org-a").mkdir(parents=True)
    for cert in (pki / "directory" / "org-a").iterdir():
        (entries / "org-a" / cert.name).write_bytes(cert.read_bytes())
    (entries / "org-a" / "directory.toml").write_text(
        '[[organisation]]\ncredentials = "."\nname = "Clinic A"\nlevel = "community"\n'
    )
    # The consent registry's public URL (the audience of organisation assertions) is configured
    # before it starts, as compose does: its port is picked here (free_port). The other roles
    # bind port 0 and announce what they got.
    consent_port = free_port()
    ca_public = str(pki / "ca-public")
    roles.start(
        "consent",
        "consent",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "consent"),
            "IPJMS_PORT": str(consent_port),
            "IPJMS_CA_DIR": ca_public,
            "IPJMS_PUBLIC_URL": f"http://127.0.0.1:{consent_port}",
        },
    )
    roles.start(
        "coordinator",
        "coordinator",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "coordinator"),
            "IPJMS_PORT": "0",  # with IPJMS_GRPC_PORT 0: both ports the OS's pick
            "IPJMS_GRPC_PORT": "0",
            "IPJMS_ORG_DIR": str(pki / "orgs" / "org-authority"),
            "IPJMS_CA_DIR": ca_public,
            "IPJMS_CONSENT_URL": f"http://127.0.0.1:{consent_port}",
            "IPJMS_DIRECTORY_CONFIG": str(directory),
            "IPJMS_DIRECTORY_DIR": str(entries),
        },
    )
    # the pseudonymisation authority (issue 23): nodes and SuperNodes get its URL, no linkage key
    pseudonym_port = free_port()
    pseudonym_url = f"http://127.0.0.1:{pseudonym_port}"
    roles.start(
        "pseudonym",
        "pseudonym",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "pseudonym"),
            "IPJMS_PORT": str(pseudonym_port),
            "IPJMS_CA_DIR": ca_public,
            "IPJMS_PUBLIC_URL": pseudonym_url,
            "IPJMS_PSEUDONYM_ORG_ID": "org-pseudonym",
            "IPJMS_PSEUDONYM_ALLOW": "org-a",
        },
    )
    roles.wait_healthy("consent", consent_port)
    roles.wait_healthy("pseudonym", pseudonym_port)
    coordinator = roles.ports("coordinator", tmp_path / "coordinator")
    coord_http, coord_grpc = coordinator["http"], coordinator["grpc"]
    roles.wait_healthy("coordinator", coord_http)
    roles.start(
        "node-a",
        "node",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "node-a"),
            "IPJMS_PORT": "0",
            "IPJMS_ORG_DIR": str(pki / "orgs" / "org-a"),
            "IPJMS_CA_DIR": ca_public,
            "IPJMS_ADMIN_PASSWORD_FILE": str(pki / "secrets" / "node-a-admin" / "password"),
            "IPJMS_NODE_ORG_ID": "org-a",
            "IPJMS_NODE_NAME": "Clinic A",
            "IPJMS_NODE_LEVEL": "community",
            "IPJMS_NODE_PSEUDONYM_URL": pseudonym_url,
            "IPJMS_NODE_CONSENT_URL": f"http://127.0.0.1:{consent_port}",
            "IPJMS_NODE_COORDINATOR_ADDRESS": f"127.0.0.1:{coord_grpc}",
            "IPJMS_FL_CLIENT_PUBLIC_KEY_FILE": str(
                pki / "secrets" / "node-a-fl-public" / "public.pem"
            ),
        },
    )
    node_port = roles.ports("node-a", tmp_path / "node-a")["http"]
    roles.wait_healthy("node-a", node_port)

    from trust.backend_auth import make_org_assertion
    from trust.pki import load_org

    authority = load_org(pki / "orgs" / "org-authority")
    status_url = f"http://127.0.0.1:{coord_http}/status"

    def org_a_online() -> bool:
        token = make_org_assertion(authority, status_url)
        r = httpx.get(status_url, headers={"authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200, r.text
        orgs = {o["org_id"]: o for o in r.json()["organisations"]}
        assert {"org-authority", "org-a"} <= set(orgs), "directory config was not registered"
        return bool(orgs["org-a"]["online"])

    wait_until(org_a_online, timeout=60, interval=0.5, what="org-a online at the coordinator")
    # the node's admin password came from the generated file, never from its log
    password = (pki / "secrets" / "node-a-admin" / "password").read_text().strip()
    assert password not in roles.log("node-a")
    r = httpx.post(
        f"http://127.0.0.1:{node_port}/auth/token",
        data={"grant_type": "password", "username": "admin", "password": password},
        timeout=10,
    )
    assert r.status_code == 200, r.text

    # The SuperNode's backend client key (generated by pki-bootstrap, public half registered by
    # the node role on first start) obtains a token from the node.
    from federated.cohort import BackendTokenSource

    client_key = pki / "secrets" / "node-a-fl" / "key.pem"
    with httpx.Client(timeout=10) as http:
        source = BackendTokenSource(
            f"http://127.0.0.1:{node_port}", "fl-supernode", client_key, "system/*.rs"
        )
        assert source.token(http)

    # SuperLink admitting org-a's SuperNode, and that SuperNode, both healthy.
    # Flower's SuperLink binds its Fleet and Control ports itself and cannot report a port 0:
    # those two are picked here (free_port); the health ports are bound at 0 and announced.
    fleet, control = free_port(), free_port()
    roles.start(
        "superlink",
        "superlink",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "superlink"),
            "IPJMS_PORT": "0",
            "IPJMS_FLEET_PORT": str(fleet),
            "IPJMS_CONTROL_PORT": str(control),
            "IPJMS_ORG_DIR": str(pki / "orgs" / "org-authority"),
            "IPJMS_DIRECTORY_DIR": str(pki / "directory"),
            "IPJMS_FL_AUTHORIZE": "org-a",
            # KNOWN GAP: with the container default 0.0.0.0, `ipjms fl superlink` registers
            # SuperNodes through its Control API at 0.0.0.0:PORT and TLS verification of that
            # name fails (federated/cli.py); until federated/ connects locally via 127.0.0.1,
            # this test binds the SuperLink to 127.0.0.1.
            "IPJMS_LISTEN_HOST": "127.0.0.1",
        },
    )
    roles.wait_healthy("superlink", roles.ports("superlink", tmp_path / "superlink")["http"])
    wait_until(
        lambda: (
            (tmp_path / "superlink" / "supernodes.json").exists()
            and "org-a" in (tmp_path / "superlink" / "supernodes.json").read_text()
        ),
        timeout=60,
        what="org-a's SuperNode admitted",
    )
    # The SuperNode gets only what the chart mounts into it: org.json, the CA certificate and
    # the signing certificate and key — no TLS or encryption private key.
    signing_only = tmp_path / "supernode-a-org"
    signing_only.mkdir()
    for name in ("org.json", "ca.cert.pem", "signing.cert.pem", "signing.key.pem"):
        shutil.copy2(pki / "orgs" / "org-a" / name, signing_only / name)
    roles.start(
        "supernode-a",
        "supernode",
        {
            "IPJMS_DATA_DIR": str(tmp_path / "supernode-a"),
            "IPJMS_PORT": "0",
            "IPJMS_ORG_DIR": str(signing_only),
            "IPJMS_SUPERLINK_ADDRESS": f"127.0.0.1:{fleet}",
            "IPJMS_FHIR_URL": f"http://127.0.0.1:{node_port}",
            "IPJMS_FL_CLIENT_KEY_FILE": str(client_key),
            "IPJMS_NODE_CONSENT_URL": f"http://127.0.0.1:{consent_port}",
            "IPJMS_NODE_PSEUDONYM_URL": pseudonym_url,
            "IPJMS_AUTHORITY_ORG": "org-authority",
        },
    )
    roles.wait_healthy("supernode-a", roles.ports("supernode-a", tmp_path / "supernode-a")["http"])
    # the node holds no linkage key; the authority made its own OPRF key, and answers org-a
    assert not [p for p in tmp_path.rglob("*") if "linkage" in p.name]
    assert list((tmp_path / "pseudonym" / "oprf-keys").glob("v*.key"))
    from trust.oprf_client import OprfPseudonyms

    org_a = load_org(pki / "orgs" / "org-a")
    (pseudonym,) = OprfPseudonyms(pseudonym_url, org_a).pseudonyms([("urn:test", "1")])
    assert pseudonym.startswith("v1.")


@pytest.mark.postgres
def test_node_role_on_postgresql(roles: Roles, tmp_path: Path, pg_url: str) -> None:
    """The node role as compose/Kubernetes run it: PostgreSQL URL without a password, the password
    handed over through IPJMS_DB_PASSWORD_FILE (read per connection), schema created on first
    start."""
    import psycopg

    password_file = tmp_path / "db-password"
    password_file.write_text("not-used-by-trust-auth\n")
    admin_file = tmp_path / "admin-password"
    admin_file.write_text("a-long-admin-password\n")
    env = {
        "IPJMS_DATA_DIR": str(tmp_path / "node"),
        "IPJMS_PORT": "0",
        "IPJMS_DB_URL": pg_url,
        "IPJMS_DB_PASSWORD_FILE": str(password_file),
        "IPJMS_ADMIN_PASSWORD_FILE": str(admin_file),
        "IPJMS_NODE_ORG_ID": "org-pg",
        "IPJMS_NODE_LEVEL": "tertiary",
        # required by the node role (its organisation's credentials sign the requests to the
        # authority); not asked in this test (no patient is pseudonymised)
        "IPJMS_NODE_PSEUDONYM_URL": "https://pseudonym.invalid:8080",
        "IPJMS_ORG_DIR": str(tmp_path / "ca" / "orgs" / "org-pg"),
        "IPJMS_CA_DIR": str(tmp_path / "ca"),
    }
    from trust.pki import init_ca, issue_org

    init_ca(tmp_path / "ca")
    issue_org(tmp_path / "ca", "org-pg", host="127.0.0.1")
    roles.start("node-pg", "node", env)
    port = roles.ports("node-pg", tmp_path / "node")["http"]
    roles.wait_healthy("node-pg", port)
    r = httpx.post(
        f"http://127.0.0.1:{port}/auth/token",
        data={"grant_type": "password", "username": "admin", "password": "a-long-admin-password"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    with psycopg.connect(pg_url) as conn:  # the node's schema lives in PostgreSQL, not SQLite
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables")}
    # the store's and the accounts' Alembic version tables (each migration folder keeps its own)
    assert {"store_alembic_version", "auth_alembic_version"} <= tables, tables
    assert not list((tmp_path / "node").glob("*.db")), "the node fell back to SQLite"
