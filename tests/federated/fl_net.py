"""A real federated network for the end-to-end tests: the exchange tests' region (consent
registry, coordinator, three nodes — each its own process) plus seeded synthetic patients,
research consents, a backend client per node, the authority's SuperLink and one SuperNode per
node, all as real processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exchange"))

import contextlib

from exchange_net import ORGS, Region, start_region  # noqa: E402

from consent.fhir import to_fhir  # noqa: E402
from consent.policy import ConsentRecord, Provision  # noqa: E402
from deploy.launcher import (  # noqa: E402
    Service,
    free_port,
    ipjms_command,
    start_service,
    wait_healthy,
    wait_until,
)
from federated.cohort import COHORT_CLASSES  # noqa: E402
from node.feeds.synthetic import generate_site  # noqa: E402
from node.identity import NATIONAL_ID_SYSTEM  # noqa: E402
from tests.cli_inprocess import run_ipjms  # noqa: E402
from trust.pki import OrgCredentials, init_ca, issue_org  # noqa: E402
from trust.tokens import SigningKey  # noqa: E402

__all__ = [
    "FlNet", "Pki", "SharedFlNet", "make_pki", "start_fl_net", "supernode_status", "ORGS"
]  # fmt: skip

NODES = ("hosp-a", "clinic-b", "clinic-c")
# The SuperNodes' heartbeat interval (``ipjms fl supernode --heartbeat-interval``): the least the
# SuperLink accepts. It takes a node offline after twice this without a heartbeat, so a stopped or
# killed SuperNode is offline within about 20 s instead of Flower's 60 — the wait of every
# SuperNode restart (:meth:`FlNet.ensure_supernodes`) and of a round whose node was killed.
HEARTBEAT_INTERVAL = 10.0


@dataclass
class Pki:
    ca_dir: Path
    org_dirs: dict[str, Path]
    creds: dict[str, OrgCredentials]


def make_pki(root: Path) -> Pki:
    ca_dir = root / "ca"
    init_ca(ca_dir)
    org_dirs, creds = {}, {}
    for org_id in ORGS:
        org_dirs[org_id] = root / "orgs" / org_id
        creds[org_id] = issue_org(ca_dir, org_id, out_dir=org_dirs[org_id])
    return Pki(ca_dir, org_dirs, creds)


@dataclass
class FlNet:
    root: Path
    pki: Pki
    region: Region
    superlink: Service | None = None
    superlink_dir: Path | None = None
    supernodes: dict[str, Service] = field(default_factory=dict)
    client_keys: dict[str, Path] = field(default_factory=dict)
    consented: dict[str, set[str]] = field(default_factory=dict)  # org → national ids with HRESCH
    national_ids: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)  # org → "Given Family" of patients
    # Where the SuperNodes keep their state (their privacy ledgers among it): ``root`` unless a
    # test module asks for SuperNodes of its own (:meth:`use_supernodes_under`).
    supernodes_root: Path | None = None

    def supernode_dir(self, org: str) -> Path:
        """``org``'s SuperNode data folder (its ``privacy_budget.db`` ledger is there)."""
        return (self.supernodes_root or self.root) / f"supernode-{org}"

    def use_supernodes_under(self, root: Path | None) -> None:
        """From now on every node's SuperNode keeps its state under ``root`` (``None``: the
        network's own folder); :meth:`ensure_supernode` restarts one whose folder differs. A
        module sharing the network with others calls this first: a fresh folder gives it
        SuperNodes with empty ledgers, whatever ran on the network before."""
        self.supernodes_root = root

    def stop(self) -> None:
        for s in self.supernodes.values():
            kill_group(s, signal.SIGTERM)
        if self.superlink:
            kill_group(self.superlink, signal.SIGTERM)
        self.region.stop()

    def start_supernode(
        self, org: str, min_cohort: int = 5, budget: float = 100.0, *, wait: bool = True
    ) -> Service:
        """Start ``org``'s SuperNode with this policy (it connects to the SuperLink by itself;
        :meth:`ensure_supernode` also waits until the SuperLink has it online). ``wait=False``:
        do not wait for it to be healthy (its ClientApp zygote takes seconds to import torch;
        start several, then :func:`wait_healthy` each)."""
        assert self.superlink_dir is not None
        info = json.loads((self.superlink_dir / "superlink.json").read_text())
        node = self.region.nodes[org]
        data_dir = self.supernode_dir(org)
        args = [
            "fl", "supernode", "--data-dir", str(data_dir),
            "--superlink", info["fleet"], "--org-dir", str(self.pki.org_dirs[org]),
            "--fhir-url", node.url, "--client-id", "fl-supernode",
            "--client-key", str(self.client_keys[org]), "--consent-url", self.region.consent_url,
            "--authority", "authority",
            "--pseudonym-url", self.region.pseudonym_service.base_url,
            "--port", "0", "--min-cohort", str(min_cohort), "--epsilon-budget", str(budget),
            "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
        ]  # fmt: skip
        svc = start_service(  # the health port: the OS picks, announced in the data dir
            f"supernode-{org}",
            args,
            base_url="http://127.0.0.1:{http}",
            log_dir=self.root / "logs",
            ports_dir=data_dir,
            wait=wait,
        )
        svc.extra["policy"] = (min_cohort, budget, data_dir)
        self.supernodes[org] = svc
        return svc

    def supernode_status(self) -> dict[str, str]:
        """org → the SuperLink's status of its Flower node (``registered``/``online``/
        ``offline``), read from the Control API (``flwr supernode ls``)."""
        assert self.superlink_dir is not None
        admitted = json.loads((self.superlink_dir / "supernodes.json").read_text())
        status = supernode_status(self.superlink_dir / "flwr")
        return {org: status.get(str(node_id), "unknown") for org, node_id in admitted.items()}

    def ensure_supernode(
        self, org: str, min_cohort: int = 5, budget: float = 100.0, timeout: float = 300
    ) -> Service:
        """``org``'s SuperNode running with this policy (:meth:`ensure_supernodes`)."""
        return self.ensure_supernodes({org: (min_cohort, budget)}, timeout)[org]

    def ensure_supernodes(
        self, policies: dict[str, tuple[int, float]] | Iterable[str], timeout: float = 300
    ) -> dict[str, Service]:
        """Each named node's SuperNode running with its policy ``(min_cohort, budget)`` (a
        plain list of orgs: the default, 5 and 100.0) and data folder (:meth:`supernode_dir`):
        a test that needs them calls this, so no test depends on what an earlier one left (a
        SuperNode killed by the fault test, one restarted with another policy by a refusal
        test, or one keeping another module's ledger). A running SuperNode with its policy is
        left alone; the others are stopped (:func:`stop_gracefully`: Flower deactivates the
        node) or found dead, the SuperLink is waited on to take their nodes offline (a killed
        node stays "online" until its heartbeat lapses, 2 × :data:`HEARTBEAT_INTERVAL`, and
        Flower refuses to activate an online node), then they are started again and waited on
        until the SuperLink has them online. All of them
        together: the heartbeat wait is paid once, not once per SuperNode."""
        if not isinstance(policies, dict):
            policies = {org: (5, 100.0) for org in policies}
        stale: dict[str, tuple[int, float]] = {}
        stopping: list[Service] = []
        for org, (min_cohort, budget) in policies.items():
            svc = self.supernodes.get(org)
            wanted = (min_cohort, budget, self.supernode_dir(org))
            if svc is not None and svc.alive() and svc.extra.get("policy") == wanted:
                continue
            if svc is not None and svc.alive():
                stopping.append(svc)
            stale[org] = (min_cohort, budget)
        stop_gracefully(stopping)
        if stale:
            names = ", ".join(stale)

            def offline() -> bool:
                status = self.supernode_status()
                return all(status.get(org) != "online" for org in stale)

            wait_until(offline, timeout, 1.0, f"the SuperLink to take {names} offline")
            started = self._start_supernodes(stale)

            def online() -> bool:
                for org, svc in started.items():
                    if not svc.alive():
                        raise RuntimeError(f"{org}'s SuperNode exited:\n{svc.log_tail()}")
                status = self.supernode_status()
                return all(status.get(org) == "online" for org in started)

            wait_until(online, timeout, 1.0, f"the SuperNodes of {names} to be online")
        return {org: self.supernodes[org] for org in policies}

    def _start_supernodes(self, policies: dict[str, tuple[int, float]]) -> dict[str, Service]:
        """Start these SuperNodes together and wait until each is healthy."""
        started = {
            org: self.start_supernode(org, *policy, wait=False) for org, policy in policies.items()
        }
        for svc in started.values():
            wait_healthy(svc, timeout=120)
        return started

    def fl_run(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        assert self.superlink_dir is not None
        args = [
            "fl", "run", "--data-dir", str(self.superlink_dir),
            "--registry-url", self.region.coordinator.http_url,
            "--authority-dir", str(self.pki.org_dirs["authority"]), *extra,
        ]  # fmt: skip
        return subprocess.run(
            ipjms_command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ),
        )


def supernode_status(flwr_home: Path) -> dict[str, str]:
    """Flower node id → status at the SuperLink whose Flower CLI config is in ``flwr_home``
    (asked in this process: ``federated.deployment.supernode_statuses``)."""
    from federated.deployment import supernode_statuses

    return supernode_statuses(flwr_home)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc before anything is killed)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def stop_gracefully(services: Iterable[Service], timeout: float = 30) -> None:
    """Stop SuperNodes as an operator would (``docker stop``), all at once: one SIGTERM to each
    ``ipjms fl supernode`` alone, which passes it on to Flower's SuperNode and then stops what
    is left of its process groups (federated/supervisor.py). On the way out Flower deactivates
    its node at the SuperLink, which takes it offline at once rather than when its heartbeat
    lapses. Exactly one: Flower's handler gives way to the default after the first SIGTERM,
    so a second (:func:`kill_group`'s reaches the Flower process directly and through its
    group) ends it before it deactivates. A supervisor still running after ``timeout`` is
    killed with its group."""
    running = [s for s in services if s.alive()]
    for service in running:
        service.process.send_signal(signal.SIGTERM)
    for service in running:
        try:
            service.process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(service, signal.SIGKILL)


def kill_group(service: Service, sig: int = signal.SIGKILL) -> None:
    """Kill a SuperNode as a crash would: the wrapper and every Flower process below it.

    The supervisor starts Flower in a session of its own, so killing the wrapper's process
    group alone would leave ``flower-supernode`` running and still training."""
    pids = [service.process.pid, *_descendants(service.process.pid)]
    for pid in pids:
        for kill in (lambda p: os.killpg(os.getpgid(p), sig), lambda p: os.kill(p, sig)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid)
    try:
        service.process.wait(20)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait(10)


def _seed(net: FlNet, org: str, patients: int, seed: int) -> None:
    node = net.region.nodes[org]
    run_ipjms("node", "seed", "--data-dir", str(node.data_dir), "--profile", "tertiary",
              "--patients", str(patients), "--seed", str(seed), env=node.env)  # fmt: skip
    ids, names = [], []
    for bundle in generate_site("tertiary", patients, seed):
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "Patient":
                ids += [i["value"] for i in res["identifier"] if i["system"] == NATIONAL_ID_SYSTEM]
                names += [" ".join([*n.get("given", []), n["family"]]) for n in res["name"]]
    net.national_ids[org] = ids
    net.names[org] = names


def _backend_client(net: FlNet, org: str) -> None:
    node = net.region.nodes[org]
    key = SigningKey.generate("ES256", kid="fl-supernode")
    from cryptography.hazmat.primitives import serialization

    path = net.root / f"fl-client-{org}.pem"
    path.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = net.root / f"fl-client-{org}.pub.pem"
    pub.write_bytes(key.public_pem())
    run_ipjms("node", "client", "add", "--data-dir", str(node.data_dir), "--client-id",
              "fl-supernode", "--public-key", str(pub),
              "--scope", "system/*.rs system/RiskAssessment.c", env=node.env)  # fmt: skip
    net.client_keys[org] = path


def grant_research(net: FlNet, national_id: str) -> None:
    pseudo = net.region.pseudonym(national_id)
    headers = net.region.patient_token(pseudo)
    permit = Provision(
        "permit",
        actors=frozenset({"authority"}),
        purposes=frozenset({"HRESCH"}),
        classes=frozenset(COHORT_CLASSES),
    )
    body = to_fhir(ConsentRecord("x", pseudo, "active", Provision("deny", provisions=(permit,))))
    del body["id"]
    r = httpx.post(f"{net.region.consent_url}/fhir/Consent", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text


def grant_quality(net: FlNet, national_id: str) -> None:
    """A consent permitting HQUALIMP (quality indicators) to the authority."""
    from federated.indicators.node_answer import INDICATOR_CLASSES

    pseudo = net.region.pseudonym(national_id)
    headers = net.region.patient_token(pseudo)
    permit = Provision(
        "permit",
        actors=frozenset({"authority"}),
        purposes=frozenset({"HQUALIMP"}),
        classes=frozenset(INDICATOR_CLASSES),
    )
    body = to_fhir(ConsentRecord("x", pseudo, "active", Provision("deny", provisions=(permit,))))
    del body["id"]
    r = httpx.post(f"{net.region.consent_url}/fhir/Consent", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text


def _start_superlink(root: Path, pki: Pki, superlink_dir: Path) -> Service:
    """Start the authority's SuperLink, admitting the three nodes' SuperNodes (it registers
    their keys itself once it is up: ``supernodes.json``); not waited on to be ready. Started
    from the main thread: a service dies with the thread that started it (PR_SET_PDEATHSIG,
    ``servicekit.processes.dying_with_parent``), so never from a pool's worker."""
    # Flower's SuperLink binds its Fleet and Control ports itself and cannot report a port
    # 0: those stay free_port(); the supervisor's health port is bound at 0 and announced.
    args = [
        "fl", "superlink", "--data-dir", str(superlink_dir),
        "--org-dir", str(pki.org_dirs["authority"]), "--port", "0",
        "--fleet-port", str(free_port()), "--control-port", str(free_port()),
        *[a for org in NODES for a in ("--authorize", str(pki.org_dirs[org]))],
    ]  # fmt: skip
    return start_service(
        "superlink", args, base_url="http://127.0.0.1:{http}", log_dir=root / "logs",
        ports_dir=superlink_dir, wait=False,
    )  # fmt: skip


def _prepare_node(net: FlNet, org: str, seed: int, patients: int, consent_every: int) -> None:
    """``org``'s synthetic patients, its SuperNode's backend client and the research consents."""
    _seed(net, org, patients, seed=seed)
    _backend_client(net, org)
    consented = set()
    for k, nid in enumerate(net.national_ids[org]):
        if k % consent_every != consent_every - 1:
            grant_research(net, nid)
            consented.add(nid)
    net.consented[org] = consented


def start_fl_net(root: Path, *, patients: int = 24, consent_every: int = 4) -> FlNet:
    """Every ``consent_every``-th patient of each node does NOT consent to research.

    What does not depend on each other overlaps: the SuperLink (its start and the three
    admissions, each a ``flwr supernode register`` process) comes up while the region starts
    and the nodes are seeded; the three nodes' patients, backend clients and consents are
    prepared at once, in threads (each mostly waits on its node, the consent registry and the
    pseudonymisation authority — processes of their own)."""
    from concurrent.futures import ThreadPoolExecutor

    pki = make_pki(root / "pki")
    superlink_dir = root / "superlink"
    superlink = _start_superlink(root, pki, superlink_dir)
    try:
        region = start_region(pki, root / "region")
    except BaseException:
        kill_group(superlink, signal.SIGTERM)
        raise
    net = FlNet(root, pki, region, superlink=superlink, superlink_dir=superlink_dir)
    try:
        with ThreadPoolExecutor(max_workers=len(NODES)) as pool:
            prepared = [
                pool.submit(_prepare_node, net, org, 100 + i, patients, consent_every)
                for i, org in enumerate(NODES)
            ]
            try:
                for future in prepared:
                    future.result()
            except BaseException:
                for future in prepared:
                    future.cancel()
                raise
        wait_healthy(superlink, timeout=90)
        registry = superlink_dir / "supernodes.json"

        def admitted() -> bool:
            if not superlink.alive():
                raise RuntimeError(f"the SuperLink exited:\n{superlink.log_tail()}")
            try:  # the SuperLink rewrites the file in place: it may be caught empty or partial
                return len(json.loads(registry.read_text())) == len(NODES)
            except (OSError, ValueError):
                return False

        wait_until(admitted, 90, interval=0.5, what="SuperNodes to be admitted")
        net._start_supernodes({org: (5, 100.0) for org in NODES})
    except BaseException:
        net.stop()
        raise
    return net


class SharedFlNet:
    """One federated network for the test modules that each needed one of their own (the
    e2e, malicious-server and console-run modules; tests/conftest.py's ``shared_fl_net``): a
    bring-up is about 100 CPU-seconds. Started on first use; stopped once the tests using it are
    done (tests/conftest.py's teardown hook) and started again if a later test asks for it.

    Sharing is safe because no test relies on what another left: each module takes the
    SuperNodes it needs with :meth:`FlNet.ensure_supernode` (its own data folders where it
    counts its ledgers from zero, :meth:`FlNet.use_supernodes_under`), and every run has its
    own label."""

    def __init__(self, make_root: Callable[[], Path]) -> None:
        self._make_root = make_root
        self._net: FlNet | None = None

    def get(self) -> FlNet:
        if self._net is None:
            self._net = start_fl_net(self._make_root())
        return self._net

    @property
    def running(self) -> bool:
        return self._net is not None

    def stop(self) -> None:
        net, self._net = self._net, None
        if net is not None:
            net.stop()
