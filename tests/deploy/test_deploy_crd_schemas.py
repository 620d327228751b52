"""Issue 22, must-show 4: the backup/restore drill on the operators' manifests, validated against
their CRD schemas (crd_schemas/: faithful subsets of CloudNativePG's and the Prometheus
Operator's CRDs, their sources named there).

The drill, as an operator runs it (deploy/README.md, "Backup/restore drill"):
1. an on-demand base backup of every database (`--set postgres.backup.onDemand=NAME`: one
   CloudNativePG `Backup` per Cluster), beside the continuous WAL archive and the daily
   `ScheduledBackup`;
2. a new release that bootstraps every database from that object store up to a target time;
3. the services pointed at the restored release.
Every operator object of each step is validated here; the Kubernetes kinds of the same renders are
validated against the Kubernetes schemas in test_deploy_k8s.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_files import helm_render

Doc = dict[str, Any]
SCHEMAS = Path(__file__).parent / "crd_schemas"
GROUPS = {"postgresql.cnpg.io/v1": "postgresql.cnpg.io_v1.yaml",
          "monitoring.coreos.com/v1": "monitoring.coreos.com_v1.yaml"}  # fmt: skip
TARGET = "2026-12-07 08:30:00+00"


def validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    spec = yaml.safe_load((SCHEMAS / GROUPS[api_version]).read_text())
    if kind not in spec:
        raise AssertionError(f"no CRD schema for {api_version} {kind}: add it from the CRD")
    schema = {**spec[kind], "$defs": spec["$defs"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def crd_errors(docs: list[Doc]) -> list[str]:
    """Every object of the operators' API groups against its CRD schema (one line per error)."""
    errors: list[str] = []
    for d in docs:
        if d["apiVersion"] in GROUPS:
            for e in validator(d["apiVersion"], d["kind"]).iter_errors(d):
                where = "/".join(str(p) for p in e.absolute_path)
                errors.append(f"{d['kind']} {d['metadata']['name']}: {where}: {e.message}")
    return errors


def of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def origin() -> list[Doc]:
    """Step 1: the production release with an on-demand backup of every database."""
    return helm_render({"postgres": {"backup": {"onDemand": "drill-20261207"}}})


@pytest.fixture(scope="module")
def restored() -> list[Doc]:
    """Step 2: a new release restoring every database of release "ipjms" up to TARGET."""
    return helm_render(
        {"postgres": {"recovery": {"enabled": True, "targetTime": TARGET}}}, release="restore"
    )


def test_every_operator_object_of_the_drill_is_valid_against_its_crd(
    origin: list[Doc], restored: list[Doc]
) -> None:
    kinds = {d["kind"] for d in [*origin, *restored] if d["apiVersion"] in GROUPS}
    assert kinds == {"Cluster", "ScheduledBackup", "Backup", "ServiceMonitor", "PodMonitor"}
    assert crd_errors(origin) == []
    assert crd_errors(restored) == []
    assert crd_errors(helm_render(release="blue")) == []


def test_the_drill_backs_up_every_database_and_restores_each_from_its_own_backups(
    origin: list[Doc], restored: list[Doc]
) -> None:
    clusters = {d["metadata"]["name"]: d for d in of(origin, "Cluster")}
    assert len(clusters) == 6  # five services and the pseudonymisation authority
    # step 1: one on-demand Backup and one ScheduledBackup per Cluster, by the object store
    backups = {b["spec"]["cluster"]["name"]: b for b in of(origin, "Backup")}
    assert set(backups) == set(clusters)
    for name, backup in backups.items():
        assert backup["metadata"]["name"] == f"{name}-drill-20261207"
        assert backup["spec"]["method"] == "barmanObjectStore"
    assert {s["spec"]["cluster"]["name"] for s in of(origin, "ScheduledBackup")} == set(clusters)
    # step 2: every restored Cluster reads its origin's archive (same store, the origin's
    # serverName, which defaults to the Cluster's name) up to the target time
    for cluster in of(restored, "Cluster"):
        name = cluster["metadata"]["name"].removeprefix("restore-")
        origin_store = clusters[name]["spec"]["backup"]["barmanObjectStore"]
        recovery = cluster["spec"]["bootstrap"]["recovery"]
        assert recovery["recoveryTarget"] == {"targetTime": TARGET}
        (source,) = [
            e for e in cluster["spec"]["externalClusters"] if e["name"] == recovery["source"]
        ]
        store = source["barmanObjectStore"]
        assert store["serverName"] == name
        assert store["destinationPath"] == origin_store["destinationPath"]
        assert store["s3Credentials"] == origin_store["s3Credentials"]
        # and the restored database backs itself up again, encrypted, under its own name
        own = cluster["spec"]["backup"]["barmanObjectStore"]
        assert own.get("serverName", cluster["metadata"]["name"]) != name
        assert own["wal"]["encryption"] and own["data"]["encryption"]
    # step 3: the restored release's services use the restored databases
    cfg = next(
        d
        for d in restored
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "restore-node-tertiary"
    )
    assert "@restore-db-tertiary-rw:5432/" in cfg["data"]["IPJMS_DB_URL"]


def _change(docs: list[Doc], kind: str, edit) -> list[Doc]:  # type: ignore[no-untyped-def]
    copied = copy.deepcopy(docs)
    edit(next(d for d in copied if d["kind"] == kind))
    return copied


def _misspelt_encryption(c: Doc) -> None:
    wal = c["spec"]["backup"]["barmanObjectStore"]["wal"]
    wal["encrytion"] = wal.pop("encryption")


def _unknown_encryption(c: Doc) -> None:
    c["spec"]["backup"]["barmanObjectStore"]["data"]["encryption"] = "AES-256"


def _bad_retention(c: Doc) -> None:
    c["spec"]["backup"]["retentionPolicy"] = "30 days"


def _no_destination(c: Doc) -> None:
    c["spec"]["backup"]["barmanObjectStore"].pop("destinationPath")


def _anti_affinity_mandatory(c: Doc) -> None:
    c["spec"]["affinity"]["podAntiAffinityType"] = "mandatory"


def _schedule_without_cluster(s: Doc) -> None:
    s["spec"].pop("cluster")


def _backup_method_typo(b: Doc) -> None:
    b["spec"]["method"] = "barmanObjectstore"


def _scheme_upper_case(m: Doc) -> None:
    m["spec"]["endpoints"][0]["scheme"] = "HTTPS"


def _interval_with_space(m: Doc) -> None:
    m["spec"]["podMetricsEndpoints"][0]["interval"] = "30 s"


BREAKAGES = [
    ("Cluster", _misspelt_encryption, "'encrytion' was unexpected"),
    ("Cluster", _unknown_encryption, "'AES-256' is not one of"),
    ("Cluster", _bad_retention, "'30 days' does not match"),
    ("Cluster", _no_destination, "'destinationPath' is a required property"),
    ("Cluster", _anti_affinity_mandatory, "'mandatory' is not one of"),
    ("ScheduledBackup", _schedule_without_cluster, "'cluster' is a required property"),
    ("Backup", _backup_method_typo, "'barmanObjectstore' is not one of"),
    ("ServiceMonitor", _scheme_upper_case, "'HTTPS' is not one of"),
    ("PodMonitor", _interval_with_space, "'30 s' does not match"),
]


@pytest.mark.parametrize(
    ("kind", "breakage", "message"),
    BREAKAGES,
    ids=[b.__name__.strip("_") for _k, b, _m in BREAKAGES],
)
def test_the_crd_schemas_refuse_a_broken_object(
    origin: list[Doc], kind: str, breakage, message: str
) -> None:  # type: ignore[no-untyped-def]
    errors = crd_errors(_change(origin, kind, breakage))
    assert any(message in e for e in errors), errors


def test_an_operator_kind_without_a_schema_is_an_error(origin: list[Doc]) -> None:
    pooler = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Pooler", "metadata": {"name": "p"}}
    with pytest.raises(AssertionError, match="no CRD schema for postgresql.cnpg.io/v1 Pooler"):
        crd_errors([*origin, pooler])
