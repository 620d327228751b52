"""Flower's deployment engine for IPJMS: SuperLink / SuperNode command lines, SuperNode keys
from the regional PKI, the generated Flower App (FAB) directory and run submission.

Verified against flwr 1.32.1:

- ``flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` serves the Fleet and
  Control APIs over TLS; ``--enable-supernode-auth`` admits only SuperNodes whose public key was
  registered through the Control API (``flwr supernode register <key.pub>``: an EC key on a NIST
  curve in OpenSSH format); ``--disable-runtime-dependency-installation`` stops it from trying to
  install app dependencies at run time.
- ``flower-supernode --root-certificates CA --auth-supernode-private-key KEY`` (OpenSSH-format EC
  private key) ``--node-config 'k="v" …' --clientappio-api-address``.
  It has no option for its heartbeat interval (``HEARTBEAT_DEFAULT_INTERVAL``, 30 s, which the
  SuperLink accepts in [10, 1800] s and times out after 2 × interval): ``ipjms fl supernode
  --heartbeat-interval`` runs it through ``federated/flower_supernode.py``, which sets it.
- ``flwr run APP_DIR CONNECTION --run-config FILE.toml --format json`` with ``FLWR_HOME``
  holding ``config.toml`` (``[superlink.<name>] address``/``root-certificates``); every
  run-config key must be declared in the app's ``[tool.flwr.app.config]``.

The SuperNode key is the organisation's CA-certified signing key (EC P-384) in OpenSSH form; the
SuperLink registers an organisation only after verifying its signing certificate against the
regional CA. (The same key thus signs org assertions and Flower's node-auth timestamps.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

__all__ = [
    "CONNECTION",
    "flwr_env",
    "write_connection",
    "superlink_args",
    "supernode_args",
    "write_supernode_key",
    "ssh_public_key_of_org",
    "register_supernode",
    "build_app_dir",
    "submit_run",
    "run_status",
    "supernode_statuses",
    "format_node_config",
]

CONNECTION = "ipjms-authority"
APP_PACKAGE = "ipjms_fl_app"


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: FLWR_HOME and the venv's bin first on PATH (the
    SuperExec starts ``flwr-serverapp``/``flwr-clientapp`` by name)."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def write_connection(flwr_home: Path, control_address: str, root_cert: Path) -> None:
    """The Flower CLI's config: one connection to the authority's SuperLink (TLS)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{control_address}"\n'
        f'root-certificates = "{root_cert}"\n'
    )


def superlink_args(
    *,
    ca_cert: Path,
    tls_cert: Path,
    tls_key: Path,
    fleet_address: str,
    control_address: str,
    serverappio_address: str,
    database: Path,
) -> list[str]:
    return [
        _bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca_cert),
        "--ssl-certfile", str(tls_cert),
        "--ssl-keyfile", str(tls_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--fleet-api-address", fleet_address,
        "--control-api-address", control_address,
        "--serverappio-api-address", serverappio_address,
        "--database", str(database),
    ]  # fmt: skip


def format_node_config(config: Mapping[str, Any]) -> str:
    """``--node-config`` syntax: space-separated ``key=value`` with TOML values."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value}")
        else:
            text = str(value)
            if '"' in text or " " in text:
                raise ValueError(f"node config {key}: spaces and quotes are not supported")
            parts.append(f'{key}="{text}"')
    return " ".join(parts)


def supernode_args(
    *,
    superlink: str,
    ca_cert: Path,
    auth_key: Path,
    node_config: Mapping[str, Any],
    clientappio_address: str,
    heartbeat_interval: float | None = None,
) -> list[str]:
    """``flower-supernode`` with these settings — started through
    ``python -m federated.flower_supernode`` with the heartbeat interval it announces to the
    SuperLink (``None``: Flower's default, 30 s)."""
    from federated.flower_supernode import DEFAULT_INTERVAL

    interval = DEFAULT_INTERVAL if heartbeat_interval is None else heartbeat_interval
    return [
        sys.executable, "-m", "federated.flower_supernode",
        "--heartbeat-interval", str(float(interval)), "--",
        "--superlink", superlink,
        "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(auth_key),
        "--node-config", format_node_config(node_config),
        "--clientappio-api-address", clientappio_address,
        "--max-retries", "1000",
    ]  # fmt: skip


def write_supernode_key(creds: Any, path: Path) -> Path:
    """Write the org's signing key in OpenSSH form (0600) for ``--auth-supernode-private-key``."""
    pem = creds.signing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def ssh_public_key_of_org(
    org_dir: Path, ca_cert_pem: bytes, revoked: Any = ()
) -> tuple[str, bytes]:
    """(org id, OpenSSH public key) of an organisation, after checking its signing certificate
    chains to the regional CA (and is not revoked)."""
    from trust.certificates import load_certificate, verify_peer_certificate

    cert_pem = (org_dir / "signing.cert.pem").read_bytes()
    org_id = verify_peer_certificate(cert_pem, ca_cert_pem, revoked=revoked, usage="signing")
    public = load_certificate(cert_pem).public_key()
    ssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return org_id, ssh + f" ipjms-org-{org_id}".encode()


def register_supernode(flwr_home: Path, public_key_file: Path) -> str:
    """Register a SuperNode public key with the SuperLink (Control API) → Flower node id."""
    proc = subprocess.run(
        [
            _bin("flwr"),
            "supernode",
            "register",
            str(public_key_file),
            CONNECTION,
            "--format",
            "json",
        ],
        env=flwr_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = _json_in(proc.stdout)
    if doc.get("success") and doc.get("node-id"):
        return str(doc["node-id"])
    raise RuntimeError(f"SuperNode registration failed: {proc.stdout[-400:]} {proc.stderr[-400:]}")


def build_app_dir(target: Path, run_config_defaults: Mapping[str, Any]) -> Path:
    """A minimal Flower App around federated.server_app / federated.client_app (the FAB the
    SuperLink ships to the SuperNodes); it never touches the project's own pyproject.toml."""
    import tomli_w

    pkg = target / APP_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""IPJMS federated app (generated)."""\n')
    (pkg / "apps.py").write_text(
        '"""Entry points: the ServerApp and ClientApp live in the installed ipjms package."""\n'
        "from federated.client_app import app as client_app\n"
        "from federated.server_app import app as server_app\n\n"
        '__all__ = ["client_app", "server_app"]\n'
    )
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "ipjms-fl-app",
            "version": "1.0.0",
            "description": "IPJMS federated readmission models",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "ipjms",
                    "components": {
                        "serverapp": f"{APP_PACKAGE}.apps:server_app",
                        "clientapp": f"{APP_PACKAGE}.apps:client_app",
                    },
                    "config": dict(run_config_defaults),
                }
            }
        },
    }
    (target / "pyproject.toml").write_bytes(tomli_w.dumps(pyproject).encode())
    return target


def submit_run(flwr_home: Path, app_dir: Path, run_config: Mapping[str, Any]) -> str:
    """``flwr run`` the app with these run-config values; returns the run id."""
    import tomli_w

    overrides = app_dir / "run-config.toml"
    overrides.write_bytes(tomli_w.dumps(dict(run_config)).encode())
    proc = subprocess.run(
        [
            _bin("flwr"),
            "run",
            str(app_dir),
            CONNECTION,
            "--run-config",
            str(overrides),
            "--format",
            "json",
        ],
        env=flwr_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = _json_in(proc.stdout)
    if doc.get("success") and doc.get("run-id"):
        return str(doc["run-id"])
    raise RuntimeError(f"flwr run failed: {proc.stdout[-600:]} {proc.stderr[-600:]}")


def supernode_statuses(flwr_home: Path, timeout: float = 30) -> dict[str, str]:
    """Flower node id -> its status at the SuperLink (``registered``/``online``/``offline``…),
    asked in this process over the Control API that ``flwr supernode ls`` uses, with the same
    connection (``config.toml`` in ``flwr_home``: address, the regional CA as root certificates)
    and Flower's runtime-version metadata. The CLI costs a Python process (about a CPU-second)
    per look; a caller waiting for a SuperNode to come online looks every second."""
    import tomllib

    import grpc
    from flwr.proto.control_pb2 import ListNodesRequest  # type: ignore[attr-defined]
    from flwr.proto.control_pb2_grpc import ControlStub
    from flwr.supercore.interceptors.runtime_version_interceptor import (
        RuntimeVersionClientInterceptor,
    )

    conf = tomllib.loads((flwr_home / "config.toml").read_text())["superlink"][CONNECTION]
    credentials = grpc.ssl_channel_credentials(Path(conf["root-certificates"]).read_bytes())
    with grpc.secure_channel(conf["address"], credentials) as channel:
        stub = ControlStub(
            grpc.intercept_channel(channel, RuntimeVersionClientInterceptor("flwr CLI"))
        )
        res = stub.ListNodes(ListNodesRequest(), timeout=timeout)
    return {str(n.node_id): str(n.status) for n in res.nodes_info}


def run_status(flwr_home: Path, run_id: str) -> dict[str, Any]:
    proc = subprocess.run(
        [_bin("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        env=flwr_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    runs = _json_in(proc.stdout).get("runs") or []
    return dict(runs[0]) if runs else {}


def _json_in(text: str) -> dict[str, Any]:
    """The JSON document the Flower CLI prints with ``--format json`` (after any notes)."""
    start = text.find("{")
    while start != -1:
        try:
            doc, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(doc, dict):
                return doc
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return {}
