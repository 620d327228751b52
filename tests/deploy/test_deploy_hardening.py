"""Issue 22, must-show 1: static checks that fail on each gap of a deployment an operator can run
safely — a plaintext hop, a missing policy, a broad key mount, a schema that accepts a bad value,
no PDB/anti-affinity, liveness asking the database, unencrypted or unscheduled backups, names
not tied to the release, an unlocked build — each run on the Helm chart's production render (no
finding) and on a copy broken in exactly that way (the finding)."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from deploy_files import COMPOSE, DOCKERFILE, ENTRYPOINT, HELM_CHART, REPO_ROOT, helm_render
from hardening_rules import (
    availability_gaps,
    backup_gaps,
    broad_key_mounts,
    network_policy_gaps,
    plaintext_hops,
    pod_specs,
)

Doc = dict[str, Any]
LOCK = REPO_ROOT / "deploy" / "requirements.lock"


@pytest.fixture(scope="module")
def prod() -> list[Doc]:
    return helm_render()


@pytest.fixture(scope="module")
def local() -> list[Doc]:
    """The local demo's packaging: hand-written PostgreSQL StatefulSets, no TLS."""
    return helm_render({"postgres": {"mode": "statefulset"}, "tls": {"enabled": False}})


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def broken(docs: list[Doc], change: Callable[[list[Doc]], object]) -> list[Doc]:
    copied = copy.deepcopy(docs)
    change(copied)
    return copied


def volume(docs: list[Doc], workload: str, name: str) -> Doc:
    tpl = next(t for n, t, _w in pod_specs(docs) if n == workload)
    return next(v for v in tpl["spec"]["volumes"] if v["name"] == name)


def container(docs: list[Doc], workload: str) -> Doc:
    tpl = next(t for n, t, _w in pod_specs(docs) if n == workload)
    return tpl["spec"]["containers"][0]


RULES = [plaintext_hops, network_policy_gaps, broad_key_mounts, availability_gaps, backup_gaps]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_production_render_has_no_gap(rule: Callable[[list[Doc]], list[str]], prod) -> None:  # type: ignore[no-untyped-def]
    assert rule(prod) == []


# --- each check fails on its gap ------------------------------------------------------------------


def _drop_egress_deny(docs: list[Doc]) -> None:
    one(docs, "NetworkPolicy", "default-deny")["spec"]["policyTypes"] = ["Ingress"]


def _publish_control(docs: list[Doc]) -> None:
    one(docs, "Service", "superlink")["spec"]["ports"].append(
        {"name": "control", "port": 9093, "targetPort": 9093}
    )


def _egress_anywhere(docs: list[Doc]) -> None:
    one(docs, "NetworkPolicy", "nodes-egress")["spec"]["egress"].append({"ports": [{"port": 443}]})


def _control_on_all_interfaces(docs: list[Doc]) -> None:
    env = container(docs, "superlink")["env"]
    env[:] = [e for e in env if e["name"] != "IPJMS_CONTROL_HOST"]


def _plain_db_url(docs: list[Doc]) -> None:
    cfg = one(docs, "ConfigMap", "node-tertiary")["data"]
    cfg["IPJMS_DB_URL"] = cfg["IPJMS_DB_URL"].split("?")[0]


def _hba_allows_plaintext(docs: list[Doc]) -> None:
    one(docs, "Cluster", "db-consent")["spec"]["postgresql"]["pg_hba"].pop(0)


def _plain_consent_url(docs: list[Doc]) -> None:
    one(docs, "ConfigMap", "coordinator")["data"]["IPJMS_CONSENT_URL"] = "http://consent:8080"


def _supernode_whole_org(docs: list[Doc]) -> None:
    volume(docs, "supernode-clinic-a", "org")["secret"].pop("items")


def _consent_encryption_key(docs: list[Doc]) -> None:
    volume(docs, "consent", "org")["secret"]["items"].append(
        {"key": "encryption.key.pem", "path": "encryption.key.pem"}
    )


def _whole_db_ca(docs: list[Doc]) -> None:
    volume(docs, "node-tertiary", "db-ca")["secret"].pop("items")


def _pgpassword_env(docs: list[Doc]) -> None:
    one(docs, "ConfigMap", "consent")["data"]["PGPASSWORD"] = "x"


def _liveness_asks_database(docs: list[Doc]) -> None:
    container(docs, "node-clinic-b")["livenessProbe"]["httpGet"]["path"] = "/healthz"


def _no_pdb(docs: list[Doc]) -> None:
    docs.remove(one(docs, "PodDisruptionBudget", "coordinator"))


def _no_anti_affinity(docs: list[Doc]) -> None:
    one(docs, "Deployment", "coordinator")["spec"]["template"]["spec"].pop("affinity")


def _cluster_ip_coordinator(docs: list[Doc]) -> None:
    one(docs, "Service", "coordinator")["spec"].pop("clusterIP")


def _single_instance(docs: list[Doc]) -> None:
    one(docs, "Cluster", "db-tertiary")["spec"]["instances"] = 1


def _wal_unencrypted(docs: list[Doc]) -> None:
    store = one(docs, "Cluster", "db-coordinator")["spec"]["backup"]["barmanObjectStore"]
    store["wal"].pop("encryption")


def _no_scheduled_backup(docs: list[Doc]) -> None:
    docs.remove(one(docs, "ScheduledBackup", "db-clinic-b"))


def _five_field_schedule(docs: list[Doc]) -> None:
    one(docs, "ScheduledBackup", "db-consent")["spec"]["schedule"] = "0 2 * * *"


BREAKAGES = [
    (plaintext_hops, _plain_db_url, "does not verify the database"),
    (plaintext_hops, _hba_allows_plaintext, "plaintext from 0.0.0.0/0 allowed"),
    (plaintext_hops, _plain_consent_url, "IPJMS_CONSENT_URL=http://consent:8080 is plaintext"),
    (network_policy_gaps, _drop_egress_deny, "no default-deny egress policy"),
    (network_policy_gaps, _publish_control, "exposes the Control API"),
    (network_policy_gaps, _egress_anywhere, "an egress rule to every destination"),
    (network_policy_gaps, _control_on_all_interfaces, "not bound to loopback"),
    (broad_key_mounts, _supernode_whole_org, "supernode-clinic-a: mounts every key"),
    (broad_key_mounts, _consent_encryption_key, "consent: mounts encryption.key.pem"),
    (broad_key_mounts, _whole_db_ca, "mounts more than ca.crt"),
    (broad_key_mounts, _pgpassword_env, "a database password in the environment"),
    (availability_gaps, _liveness_asks_database, "node-clinic-b: liveness asks /healthz"),
    (availability_gaps, _no_pdb, "coordinator: 2 replicas and no PDB"),
    (availability_gaps, _no_anti_affinity, "replicas without pod anti-affinity"),
    (availability_gaps, _cluster_ip_coordinator, "gRPC streams pin to one replica"),
    (availability_gaps, _single_instance, "db-tertiary: a single instance"),
    (backup_gaps, _wal_unencrypted, "db-coordinator: wal backups not encrypted"),
    (backup_gaps, _no_scheduled_backup, "db-clinic-b: no ScheduledBackup"),
    (backup_gaps, _five_field_schedule, "ScheduledBackup schedule '0 2 * * *'"),
]


@pytest.mark.parametrize(
    ("rule", "breakage", "finding"),
    BREAKAGES,
    ids=[b.__name__.strip("_") for _r, b, _f in BREAKAGES],
)
def test_check_fails_on_its_gap(rule, breakage, finding: str, prod) -> None:  # type: ignore[no-untyped-def]
    findings = rule(broken(prod, breakage))
    assert any(finding in f for f in findings), findings


def test_local_demo_packaging_is_reported_as_what_it_is(local: list[Doc]) -> None:
    """The hand-written StatefulSets and plaintext HTTP (postgres.mode=statefulset, TLS off) are
    exactly what the checks name: fit for a laptop cluster, not production."""
    hops = plaintext_hops(local)
    assert "no CloudNativePG Cluster: the databases have no TLS" in hops
    assert any("IPJMS_HTTP_TLS is not 1" in f for f in hops)
    assert any("readinessProbe over plaintext HTTP" in f for f in hops)
    assert any("hand-written StatefulSet database" in f for f in backup_gaps(local))
    assert any("a hand-written database's liveness" in f for f in availability_gaps(local))


# --- the chart's schema ---------------------------------------------------------------------------

DEFAULTS = yaml.safe_load((HELM_CHART / "values.yaml").read_text())


def _node(**change: Any) -> dict[str, Any]:
    return {"nodes": [{**DEFAULTS["nodes"][0], **change}, *DEFAULTS["nodes"][1:]]}


BAD_VALUES = {
    "misspelt-top-level-key": {"imgae": {"tag": "0.2.0"}},
    "misspelt-nested-key": {"postgres": {"backups": {"schedule": "0 0 2 * * *"}}},
    "misspelt-node-key": {"nodes": [{**DEFAULTS["nodes"][0], "levle": "tertiary"}]},
    "tag-as-a-number": {"image": {"tag": 1.10}},
    "node-named-consent": _node(name="consent"),
    "node-named-coordinator": _node(name="coordinator"),
    "node-twice": {"nodes": [DEFAULTS["nodes"][0], DEFAULTS["nodes"][0]]},
    "org-twice": {"nodes": [DEFAULTS["nodes"][0], {**DEFAULTS["nodes"][1], "org": "org-tertiary"}]},
    "malformed-digest": {"image": {"digest": "sha256:abc"}},
    "five-field-backup-schedule": {"postgres": {"backup": {"schedule": "0 2 * * *"}}},
    "unknown-postgres-mode": {"postgres": {"mode": "operator"}},
    "no-backup-destination": {"postgres": {"backup": {"destinationPath": ""}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_refuses_a_bad_value(values: dict[str, Any]) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError):
        helm_render(values)


def test_schema_is_strict_everywhere() -> None:
    """Every object in values.schema.json closes its keys (so a misspelling anywhere fails)."""
    import json

    schema = json.loads((HELM_CHART / "values.schema.json").read_text())

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(schema, "#")


def test_a_string_tag_and_a_digest_render_as_given() -> None:
    def image(docs: list[Doc]) -> str:
        return str(container(docs, "consent")["image"])

    assert image(helm_render({"image": {"tag": "1.10"}})) == "ipjms:1.10"
    digest = "sha256:" + "ab" * 32
    assert image(helm_render({"image": {"digest": digest}})) == f"ipjms@{digest}"


# --- names tied to the release --------------------------------------------------------------------


def test_two_releases_share_no_object_and_no_selector(prod: list[Doc]) -> None:
    blue = helm_render(release="blue")
    names = {(d["kind"], d["metadata"]["name"]) for d in prod}
    blue_names = {(d["kind"], d["metadata"]["name"]) for d in blue}
    assert not names & blue_names, sorted(names & blue_names)[:5]
    assert all(name.startswith("blue-") for _kind, name in blue_names)
    for d in blue:  # every selector and policy is scoped to the release
        if d["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
            assert d["spec"]["selector"]["matchLabels"]["ipjms.io/release"] == "blue"
        if d["kind"] == "Service" and "selector" in d["spec"]:
            assert d["spec"]["selector"]["ipjms.io/release"] == "blue"
        if d["kind"] == "NetworkPolicy":
            assert d["spec"]["podSelector"]["matchLabels"]["ipjms.io/release"] == "blue"
    # and the release's services find each other under its names
    cfg = one(blue, "ConfigMap", "blue-node-tertiary")["data"]
    assert cfg["IPJMS_NODE_CONSENT_URL"] == "https://blue-consent:8080"
    assert cfg["IPJMS_DB_URL"].startswith("postgresql://ipjms@blue-db-tertiary-rw:5432/")
    assert hardening_findings(blue) == []


def hardening_findings(docs: list[Doc]) -> list[str]:
    return [f for rule in RULES for f in rule(docs)]


# --- migrations, monitoring, recovery -------------------------------------------------------------


def test_migrations_run_as_pre_upgrade_jobs_one_per_database(prod: list[Doc]) -> None:
    jobs = {d["metadata"]["name"]: d for d in prod if d["kind"] == "Job"}
    clusters = {d["metadata"]["name"] for d in prod if d["kind"] == "Cluster"}
    # every database but the pseudonymisation authority's: it has no Alembic history (it
    # creates its three tables at start, trust/oprf_service.py), so nothing to migrate
    assert len(jobs) == 5 and clusters - {"db-pseudonym"} == {
        f"db-{j.removeprefix('migrate-').removeprefix('node-')}" for j in jobs
    }, (sorted(jobs), sorted(clusters))
    configs = {d["metadata"]["name"]: d["data"] for d in prod if d["kind"] == "ConfigMap"}
    for name, job in jobs.items():
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade", name
        c = job["spec"]["template"]["spec"]["containers"][0]
        owner = name.removeprefix("migrate-")
        service = "node" if owner.startswith("node-") else owner
        assert c["args"] == ["migrate", "--service", service]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["IPJMS_DB_URL"] == configs[owner]["IPJMS_DB_URL"], name


def test_metrics_are_scraped_by_the_prometheus_operator(prod: list[Doc]) -> None:
    services = one(prod, "ServiceMonitor", "services")["spec"]
    (endpoint,) = services["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["insecureSkipVerify"] is False
    selected = [
        d["metadata"]["name"]
        for d in prod
        if d["kind"] == "Service"
        and all(
            d["metadata"]["labels"].get(e["key"]) in e["values"]
            for e in services["selector"]["matchExpressions"]
        )
    ]
    assert sorted(selected) == [
        "consent",
        "coordinator",
        *sorted(f"node-{n['name']}" for n in DEFAULTS["nodes"]),
    ]
    assert one(prod, "ServiceMonitor", "superlink")["spec"]["endpoints"][0]["port"] == "metrics"
    assert one(prod, "PodMonitor", "supernodes")
    for name, tpl, _w in pod_specs(prod):  # the annotations the README promises
        if name == "superlink" or name.startswith("supernode-"):
            assert tpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
    for d in prod:
        if d["kind"] == "Cluster":
            assert d["spec"]["monitoring"]["enablePodMonitor"] is True


def test_point_in_time_recovery_renders_a_restore_of_every_database(prod: list[Doc]) -> None:
    """The restore drill's manifests: every Cluster bootstraps from its origin's backups up to a
    target time, from the object store the backups were written to."""
    target = "2026-12-06 23:30:00+00"
    restored = helm_render(
        {"postgres": {"recovery": {"enabled": True, "targetTime": target}}}, release="restore"
    )
    origin_store = one(prod, "Cluster", "db-tertiary")["spec"]["backup"]["barmanObjectStore"]
    clusters = [d for d in restored if d["kind"] == "Cluster"]
    assert len(clusters) == 6  # the pseudonymisation authority has its own database
    for cluster in clusters:
        spec = cluster["spec"]
        recovery = spec["bootstrap"]["recovery"]
        assert "initdb" not in spec["bootstrap"]
        assert recovery["recoveryTarget"]["targetTime"] == target
        (source,) = spec["externalClusters"]
        assert source["name"] == recovery["source"]
        store = source["barmanObjectStore"]
        assert store["destinationPath"] == origin_store["destinationPath"]
        # the origin release "ipjms" wrote under the database's own name
        assert store["serverName"] == cluster["metadata"]["name"].removeprefix("restore-")
        assert spec["backup"]["barmanObjectStore"]["wal"]["encryption"]  # and it backs up too
    assert hardening_findings(restored) == []


# --- builds ---------------------------------------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==([^\s\\]+)")


def lock_problems(text: str, dependencies: list[str]) -> list[str]:
    """A pip-compile style lock: every requirement ``name==version`` with its sha256 hashes,
    and every direct dependency of pyproject.toml in it."""
    problems: list[str] = []
    entries = re.split(r"\n(?=\S)", text)
    pinned: dict[str, str] = {}
    for entry in entries:
        first = entry.splitlines()[0] if entry.strip() else ""
        if not first or first.startswith("#"):
            continue
        m = _PIN.match(first)
        if not m:
            problems.append(f"not pinned with ==: {first.strip()}")
            continue
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        pinned[name] = m.group(3)
        if not re.search(r"--hash=sha256:[0-9a-f]{64}", entry):
            problems.append(f"{name}: no --hash")
    for dep in dependencies:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]).lower()
        if name not in pinned:
            problems.append(f"{name}: a dependency missing from the lock")
    return problems


def _dependencies() -> list[str]:
    return list(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )


def test_image_installs_a_hash_locked_requirements_file() -> None:
    text = LOCK.read_text()
    problems = lock_problems(text, _dependencies())
    assert problems == [], f"{problems}: refresh deploy/requirements.lock (Dockerfile header)"
    assert re.search(r"^torch==2\.13\.0\+cpu \\$", text, re.MULTILINE)  # CPU torch, as pinned
    dockerfile = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(
        r"pip install --require-hashes --no-deps .*-r /tmp/requirements\.lock", dockerfile
    )
    assert "COPY deploy/requirements.lock /tmp/requirements.lock" in dockerfile
    assert re.search(r"pip install --no-deps /dist/ipjms-\*\.whl", dockerfile)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("flwr>=1.20\n", "not pinned with ==: flwr>=1.20"),
        ("numpy==2.1.0\n    # via ipjms\n", "numpy: no --hash"),
        ("numpy==2.1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", "fastapi: a dependency missing"),
    ],
    ids=["unpinned", "no-hash", "missing"],
)
def test_lock_check_fails_on_an_unlocked_requirement(text: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in lock_problems(text, _dependencies()))


# --- compose and the entrypoint -------------------------------------------------------------------


def test_compose_publishes_no_control_port_and_no_password_in_the_environment() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert not compose["services"]["superlink"].get("ports")
    text = ENTRYPOINT.read_text()
    assert "export PGPASSWORD" not in text and "PGPASSWORD=" not in text
    assert '--control-host "${IPJMS_CONTROL_HOST:-127.0.0.1}"' in text
