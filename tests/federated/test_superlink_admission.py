"""Who the SuperLink admits (federated/README.md "Running it"; federated/deployment.py): only the
SuperNodes of organisations whose signing certificate chains to the regional CA and that the
authority registered (``--authorize`` / ``ipjms fl authorize``). Over a real SuperLink and real
SuperNode processes with TLS; no nodes, consent registry or training are needed, since an
unadmitted SuperNode never gets as far as a message."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fl_net import kill_group, supernode_status

from deploy.launcher import Service, free_port, ipjms_command, start_service, wait_until
from federated.deployment import flwr_env, supernode_args
from trust.pki import init_ca, issue_org
from trust.pseudonym import load_or_create_linkage_key
from trust.tokens import SigningKey

pytestmark = pytest.mark.slow

REFUSED_KEY = "No SuperNode found with the given public key"  # flwr 1.32.1, Fleet.ActivateNode
REFUSED_SELF_REGISTRATION = "SuperNode registration is disabled through Fleet API"


@dataclass
class Link:
    root: Path
    data_dir: Path
    fleet: str
    service: Service

    def nodes(self) -> dict[str, str]:
        """Flower node id → status, from the SuperLink's Control API (``flwr supernode ls``)."""
        return supernode_status(self.data_dir / "flwr")

    def admitted(self) -> dict[str, str]:
        path = self.data_dir / "supernodes.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def log(self) -> str:
        return self.service.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    """A SuperLink of the region's CA that admitted hosp-a only; clinic-b holds credentials of
    the same CA but was never authorised."""
    root = tmp_path_factory.mktemp("admission")
    init_ca(root / "ca")
    for org in ("authority", "hosp-a", "clinic-b"):
        issue_org(root / "ca", org, out_dir=root / "orgs" / org)
    # Flower binds its Fleet and Control ports itself and cannot report a port 0: those stay
    # free_port(); the supervisor's health port is bound at 0 and announced in the data dir.
    data_dir, fleet_port = root / "superlink", free_port()
    service = start_service(
        "superlink",
        [
            "fl",
            "superlink",
            "--data-dir",
            str(data_dir),
            "--org-dir",
            str(root / "orgs" / "authority"),
            "--port",
            "0",
            "--fleet-port",
            str(fleet_port),
            "--control-port",
            str(free_port()),
            "--authorize",
            str(root / "orgs" / "hosp-a"),
        ],  # fmt: skip
        base_url="http://127.0.0.1:{http}",
        log_dir=root / "logs",
        timeout=120,
        ports_dir=data_dir,
    )
    net = Link(root, data_dir, f"127.0.0.1:{fleet_port}", service)
    try:
        wait_until(lambda: "hosp-a" in _read_admitted(net), 120, 0.5, "hosp-a to be admitted")
        yield net
    finally:
        kill_group(service, signal.SIGTERM)


def _read_admitted(net: Link) -> dict[str, str]:
    try:  # the SuperLink writes the file while we may read it
        return net.admitted()
    except ValueError:
        return {}


def _supernode(net: Link, org: str) -> Service:
    """``ipjms fl supernode`` of ``org`` (its CA-certified key). Its FHIR node and consent
    registry are never reached: a SuperNode only reads them for a message it is sent."""
    client_key = net.root / "client.pem"
    if not client_key.exists():
        key = SigningKey.generate("ES256", kid="fl-supernode").private_key
        client_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        load_or_create_linkage_key(net.root / "linkage.key")
    nowhere = "http://127.0.0.1:9"
    return start_service(
        f"supernode-{org}",
        [
            "fl",
            "supernode",
            "--data-dir",
            str(net.root / f"supernode-{org}"),
            "--superlink",
            net.fleet,
            "--org-dir",
            str(net.root / "orgs" / org),
            "--fhir-url",
            nowhere,
            "--client-id",
            "fl-supernode",
            "--client-key",
            str(client_key),
            "--consent-url",
            nowhere,
            "--authority",
            "authority",
            "--linkage-key",
            str(net.root / "linkage.key"),
            "--port",
            "0",
        ],  # fmt: skip
        base_url="http://127.0.0.1:{http}",  # the health port it bound, announced
        log_dir=net.root / "logs",
        wait=False,
        ports_dir=net.root / f"supernode-{org}",
    )


def _stop(service: Service) -> None:
    if service.process.poll() is None:
        kill_group(service, signal.SIGTERM)


def test_an_organisation_certified_by_another_ca_is_not_admitted(link: Link) -> None:
    init_ca(link.root / "other-ca")
    issue_org(link.root / "other-ca", "hosp-x", out_dir=link.root / "other-orgs" / "hosp-x")
    before_nodes, before_admitted = link.nodes(), link.admitted()
    proc = subprocess.run(
        ipjms_command(
            "fl",
            "authorize",
            "--data-dir",
            str(link.data_dir),
            "--org-dir",
            str(link.root / "other-orgs" / "hosp-x"),
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "not admitted" in out and "does not verify against the regional CA" in out, out
    # nothing registered: no key file, no entry, no new Flower node
    assert not (link.data_dir / "supernode-keys" / "hosp-x.pub").exists()
    assert link.admitted() == before_admitted
    assert link.nodes() == before_nodes


def test_a_supernode_the_authority_never_registered_is_refused(link: Link) -> None:
    """clinic-b's key is certified by the regional CA but was never authorised: the SuperLink
    refuses to activate it and its SuperNode stops; once authorised, the same SuperNode starts
    and goes online (so the refusal was the registration's, not a broken set-up)."""
    assert "clinic-b" not in link.admitted()
    refused = _supernode(link, "clinic-b")
    try:
        wait_until(lambda: refused.process.poll() is not None, 180, 0.5, "the refused SuperNode")
    finally:
        _stop(refused)
    assert refused.process.returncode != 0
    assert f"Activation failed: {REFUSED_KEY}" in link.log()
    assert "online" not in set(link.nodes().values())  # hosp-a's SuperNode never started
    subprocess.run(
        ipjms_command(
            "fl",
            "authorize",
            "--data-dir",
            str(link.data_dir),
            "--org-dir",
            str(link.root / "orgs" / "clinic-b"),
        ),  # fmt: skip
        check=True,
        capture_output=True,
        timeout=180,
    )
    node_id = link.admitted()["clinic-b"]
    admitted = _supernode(link, "clinic-b")
    try:
        wait_until(
            lambda: admitted.process.poll() is not None or link.nodes().get(node_id) == "online",
            180,
            1.0,
            "the authorised SuperNode to go online",
        )
        assert admitted.process.poll() is None, admitted.log_tail()
    finally:
        _stop(admitted)


def test_a_supernode_without_an_organisation_key_cannot_register_itself(link: Link) -> None:
    """Anyone who reaches the Fleet port can run ``flower-supernode`` without a key, which asks
    the SuperLink to register it; with SuperNode authentication on, the SuperLink refuses."""
    before = link.nodes()
    tls = link.data_dir / "tls" / "ca.pem"
    args = supernode_args(
        superlink=link.fleet,
        ca_cert=tls,
        auth_key=tls,  # replaced below: no key at all
        node_config={"org-id": "intruder"},
        clientappio_address=f"127.0.0.1:{free_port()}",
    )
    at = args.index("--auth-supernode-private-key")
    del args[at : at + 2]
    args[args.index("--max-retries") + 1] = "1"
    with (link.root / "logs" / "intruder.log").open("w") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=flwr_env(link.root / "intruder")
        )
    try:
        wait_until(
            lambda: (
                proc.poll() is not None
                or REFUSED_SELF_REGISTRATION in link.log()
                or link.nodes() != before
            ),
            180,
            1.0,
            "the keyless SuperNode's registration",
        )
        assert link.nodes() == before  # no node was added
        assert REFUSED_SELF_REGISTRATION in link.log()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
