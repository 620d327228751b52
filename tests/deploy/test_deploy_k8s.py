"""deploy/k8s: every rendered manifest against the published Kubernetes schemas (offline, via
kubernetes-validate), then probes, resources, non-root pods, secrets and database isolation."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_files import (
    HELM_CHART,
    IMAGE_UID,
    K8S,
    REPO_ROOT,
    helm_render,
    k8s_copy_with_secrets,
    kustomize,
    pod_templates,
    selector_matches,
)

# The oldest Kubernetes minor we support (probes, NetworkPolicy and PSA labels as used here).
K8S_VERSION = "1.29.0"
BASE_NODES = {"node-tertiary", "node-clinic-a", "node-clinic-b"}
CLINIC_C = {
    "name": "clinic-c",
    "org": "org-clinic-c",
    "displayName": "Community Clinic C",
    "level": "community",
}


@pytest.fixture(scope="module")
def k8s_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return k8s_copy_with_secrets(tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="module")
def rendered(k8s_dir: Path) -> dict[str, list[dict[str, Any]]]:
    import yaml

    default_nodes = yaml.safe_load((HELM_CHART / "values.yaml").read_text())["nodes"]
    local = {"postgres": {"mode": "statefulset"}}
    return {
        "base": kustomize(k8s_dir / "base"),
        "add-node": kustomize(k8s_dir / "overlays" / "add-node"),
        "helm": helm_render(),
        "helm-4-nodes": helm_render({"nodes": [*default_nodes, CLINIC_C]}),
        # the local demo's database packaging (hand-written StatefulSets), as the Kustomize base
        "helm-local": helm_render(local),
        "helm-local-4-nodes": helm_render({**local, "nodes": [*default_nodes, CLINIC_C]}),
    }


@pytest.fixture(params=["base", "add-node", "helm", "helm-4-nodes", "helm-local"])
def docs(request: pytest.FixtureRequest, rendered: dict[str, list[dict[str, Any]]]) -> list[dict]:
    return rendered[request.param]


def containers(docs: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    for name, tpl in pod_templates(docs).items():
        for c in tpl["spec"]["containers"]:
            yield name, tpl, c


# Kinds of operators' CRDs (CloudNativePG, Prometheus Operator): checked in test_deploy_hardening.
CRD_KINDS = {"Cluster", "ScheduledBackup", "ServiceMonitor", "PodMonitor"}


def test_every_manifest_valid_against_kubernetes_schema(docs: list[dict[str, Any]]) -> None:
    assert len(docs) > 30  # a render that silently lost its workloads is a failure too
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields are errors, as `kubectl apply --validate=strict` would report
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("livenesProbe", {}),
        lambda d: d["spec"].__setitem__("replicas", "one"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_schema_validation_rejects_a_broken_manifest(rendered, breakage) -> None:  # type: ignore[no-untyped-def]
    deployment = next(d for d in rendered["base"] if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_render_fails_without_generated_secrets(tmp_path: Path) -> None:
    """No secret material is committed, so a fresh checkout cannot render by accident."""
    import shutil

    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets"))
    with pytest.raises(subprocess.CalledProcessError):
        kustomize(tmp_path / "k8s" / "base")


def test_every_container_has_probes_and_resources(docs: list[dict[str, Any]]) -> None:
    jobs = {d["metadata"]["name"] for d in docs if d["kind"] == "Job"}
    for name, _tpl, c in containers(docs):
        for probe in () if name in jobs else ("readinessProbe", "livenessProbe"):
            assert probe in c, f"{name}/{c['name']} has no {probe}"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{name}: resources.{kind}"
        http_ports = {p["name"] for p in c.get("ports", []) if p["name"] == "http"}
        if http_ports:  # IPJMS HTTP services: ready on /healthz, alive on /livez (no database)
            assert c["readinessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name


def test_pods_run_as_non_root(docs: list[dict[str, Any]]) -> None:
    for name, tpl, c in containers(docs):
        pod_sc = tpl["spec"].get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 0) != 0, name
        if c["image"].startswith("ipjms"):
            assert pod_sc["runAsUser"] == IMAGE_UID, name
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
        assert tpl["spec"].get("automountServiceAccountToken") is False, name


def test_images_are_pinned(docs: list[dict[str, Any]]) -> None:
    for name, _tpl, c in containers(docs):
        image = c["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


@pytest.mark.parametrize("variant", ["base", "add-node"])
def test_all_references_resolve(variant: str, rendered) -> None:  # type: ignore[no-untyped-def]
    """Kustomize generates every Secret and ConfigMap the pods mount (the Helm chart expects
    them to exist, see its values.yaml)."""
    docs = rendered[variant]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name, tpl, c in containers(docs):
        for v in tpl["spec"].get("volumes", []):
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in names, f"{name}: {v}"
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, f"{name}: {v}"
        for e in c.get("envFrom", []):
            assert ("ConfigMap", e["configMapRef"]["name"]) in names, name
    for d in docs:
        assert d["metadata"].get("namespace", "ipjms") == "ipjms", d["metadata"]["name"]


def test_secrets_only_from_generated_files() -> None:
    """Committed manifests hold no Secret objects and no key material; secrets/ is never tracked."""
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/k8s", "deploy/helm", "deploy/compose.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked, "deploy/k8s is not committed"
    for rel in tracked:
        assert "/secrets/" not in rel, f"secret material committed: {rel}"
        text = (REPO_ROOT / rel).read_text()
        assert "PRIVATE KEY" not in text, rel
        assert "\nkind: Secret" not in text, f"{rel} defines a Secret inline"
    ignore = (K8S / ".gitignore").read_text()
    assert "secrets/" in ignore.split()


def database_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Database name → its pods' labels: a StatefulSet's template, or the labels CloudNativePG
    gives a Cluster's instances (its inheritedMetadata and ``cnpg.io/cluster``)."""
    pods = {n: tpl["metadata"]["labels"] for n, tpl in pod_templates(docs).items()}
    out = {n: lbl for n, lbl in pods.items() if lbl["app.kubernetes.io/component"] == "database"}
    for d in docs:
        if d["kind"] == "Cluster":
            labels = dict(d["spec"]["inheritedMetadata"]["labels"])
            out[d["metadata"]["name"]] = {**labels, "cnpg.io/cluster": d["metadata"]["name"]}
    return out


def test_database_admits_only_its_own_instance(docs: list[dict[str, Any]]) -> None:
    """Evaluate the NetworkPolicies against every pod: a database's port 5432 is reachable only
    from the workload that owns it (a node's API; the coordinator; the consent registry), its
    migration Job, and (CloudNativePG) its own instances."""
    pods = {n: tpl["metadata"]["labels"] for n, tpl in pod_templates(docs).items()}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(
        "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and "ingress" not in p["spec"]
        and set(p["spec"]["podSelector"].get("matchLabels", {})) <= {"ipjms.io/release"}
        for p in policies
    ), "no default-deny ingress policy"
    databases = database_pods(docs)
    assert {f"db-{n.removeprefix('node-')}" for n in BASE_NODES} <= set(databases)
    for db, db_labels in databases.items():
        pods_here = {**pods, db: db_labels}
        selecting = [
            p
            for p in policies
            if selector_matches(p["spec"]["podSelector"].get("matchLabels", {}), db_labels)
        ]
        assert selecting, f"{db} is not isolated by any NetworkPolicy"
        admitted = set()
        for policy in selecting:
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from")
                assert peers, f"{policy['metadata']['name']} admits every source to {db}"
                ports = {p["port"] for p in rule.get("ports", [])}
                assert ports, f"{policy['metadata']['name']}: a rule without ports"
                for peer in peers:
                    assert "ipBlock" not in peer, db
                    if "namespaceSelector" in peer:  # the operator / the scraper, never SQL
                        assert 5432 not in ports, f"{db}: another namespace reaches PostgreSQL"
                        continue
                    sel = peer["podSelector"].get("matchLabels", {})
                    assert sel, f"{policy['metadata']['name']}: empty podSelector admits all"
                    if 5432 in ports:
                        admitted |= {
                            n for n, lbl in pods_here.items() if selector_matches(sel, lbl)
                        }
        # the owner only: node-x's API (its SuperNode reads through that API), the
        # coordinator, or the consent registry — whose workload name is the instance label
        owner = db_labels["ipjms.io/instance"]
        assert owner in pods, f"{db}: no workload named {owner}"
        allowed = {owner, f"migrate-{owner}", db}
        assert {owner} <= admitted <= allowed, f"{db} admits {sorted(admitted)}; expected {owner}"


def key(d: dict[str, Any]) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


def test_overlay_adds_exactly_one_node(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = {key(d) for d in rendered["base"]}
    overlay = {key(d) for d in rendered["add-node"]}
    # the one base object the overlay changes: the authority's settings (its clients gain
    # org-clinic-c, so the ConfigMap's content hash changes)
    changed = {(k, n.rsplit("-", 1)[0]) for k, n in base - overlay}
    assert changed == {("ConfigMap", "pseudonym")}, changed
    authority = next(
        d["data"]
        for d in rendered["add-node"]
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("pseudonym-")
    )
    assert "org-clinic-c" in authority["IPJMS_PSEUDONYM_ALLOW"].split()
    added = {
        (k, n.rsplit("-", 1)[0] if k in ("ConfigMap", "Secret") else n) for k, n in overlay - base
    } - changed
    assert added == {
        ("StatefulSet", "node-clinic-c"),
        ("Service", "node-clinic-c"),
        ("Deployment", "supernode-clinic-c"),
        ("PersistentVolumeClaim", "supernode-data-clinic-c"),
        ("StatefulSet", "db-clinic-c"),
        ("Service", "db-clinic-c"),
        ("NetworkPolicy", "db-clinic-c"),
        ("NetworkPolicy", "db-clients-egress-clinic-c"),
        ("ConfigMap", "node-clinic-c"),
        ("Secret", "db-clinic-c-password"),
        ("Secret", "db-clinic-c-tls"),
        ("ConfigMap", "db-hba-clinic-c"),
        ("Secret", "org-clinic-c-credentials"),
        ("Secret", "node-clinic-c-admin-password"),
        ("ConfigMap", "directory-org-clinic-c"),
        ("Secret", "fl-client-clinic-c"),
    }, added
    cfg = next(
        d
        for d in rendered["add-node"]
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("node-clinic-c-")
    )
    assert cfg["data"]["IPJMS_NODE_ORG_ID"] == "org-clinic-c"
    assert cfg["data"]["IPJMS_DB_URL"] == (
        "postgresql://ipjms@db-clinic-c:5432/ipjms"
        "?sslmode=verify-full&sslrootcert=/run/ipjms/ca/ca.cert.pem"
    )


def test_each_node_gets_its_own_credentials_and_database(docs: list[dict[str, Any]]) -> None:
    configs = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    templates = pod_templates(docs)
    nodes = {n for n in templates if n.startswith("node-")}
    assert nodes >= BASE_NODES
    for node in nodes:
        suffix = node.removeprefix("node-")
        tpl = templates[node]
        cfg = configs[tpl["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]]
        secrets = {
            v["name"]: v["secret"]["secretName"] for v in tpl["spec"]["volumes"] if "secret" in v
        }
        assert secrets["org"].startswith(f"{cfg['IPJMS_NODE_ORG_ID']}-credentials"), node
        if any(d["kind"] == "Cluster" for d in docs):  # CloudNativePG: TLS, its app Secret
            assert cfg["IPJMS_DB_URL"] == (
                f"postgresql://ipjms@db-{suffix}-rw:5432/ipjms"
                "?sslmode=verify-full&sslrootcert=/run/ipjms/db-ca/ca.crt"
            ), node
            assert secrets["db-password"] == f"db-{suffix}-app", node
            assert secrets["db-ca"] == f"db-{suffix}-ca", node
        else:
            # its own database (TLS: test_kustomize_databases_serve_tls_only)
            url = cfg["IPJMS_DB_URL"].split("?")[0]
            assert url == f"postgresql://ipjms@db-{suffix}:5432/ipjms", node
            assert secrets["db-password"].startswith(f"db-{suffix}-password"), node


def test_helm_values_add_exactly_one_node(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = {key(d) for d in rendered["helm"]}
    more = {key(d) for d in rendered["helm-4-nodes"]}
    assert base <= more
    assert more - base == {
        ("StatefulSet", "node-clinic-c"),
        ("Service", "node-clinic-c"),
        ("Deployment", "supernode-clinic-c"),
        ("PersistentVolumeClaim", "supernode-data-clinic-c"),
        ("Cluster", "db-clinic-c"),
        ("ScheduledBackup", "db-clinic-c"),
        ("NetworkPolicy", "db-clinic-c"),
        ("NetworkPolicy", "supernode-clinic-c-to-node"),
        ("Job", "migrate-node-clinic-c"),
        ("ConfigMap", "node-clinic-c"),
    }


def test_helm_chart_lints_clean_and_its_schema_rejects_bad_values() -> None:
    import helm_python

    report = helm_python.lint(HELM_CHART, strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    chart = helm_python.Chart.load(HELM_CHART)
    bad = {**CLINIC_C, "level": "hospital"}
    with pytest.raises(helm_python.HelmError):
        chart.render({"nodes": [bad]}, name="ipjms", namespace="ipjms", is_install=True)


def test_kustomize_and_helm_describe_the_same_network(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The two packagings must not drift: the Kustomize base (the local demo's packaging, with
    hand-written PostgreSQL StatefulSets) and the chart with postgres.mode=statefulset run the
    same workloads behind the same Services."""

    def shape(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        kinds = ("Deployment", "StatefulSet", "Service", "PersistentVolumeClaim")
        return {key(d) for d in docs if d["kind"] in kinds}

    assert shape(rendered["base"]) == shape(rendered["helm-local"])
    assert shape(rendered["add-node"]) == shape(rendered["helm-local-4-nodes"])


def test_coordinator_directory_lists_every_node_org(docs: list[dict[str, Any]]) -> None:
    """The coordinator registers the authority and every node's organisation on start."""
    configs = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    templates = pod_templates(docs)
    node_orgs = set()
    for name, tpl in templates.items():
        if name.startswith("node-"):
            ref = tpl["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
            node_orgs.add(configs[ref]["IPJMS_NODE_ORG_ID"])
    coordinator = templates["coordinator"]["spec"]
    container = coordinator["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    for ref in container.get("envFrom", []):
        env.update(configs[ref["configMapRef"]["name"]])
    assert env["IPJMS_DIRECTORY_DIR"] == "/run/ipjms/directory"
    volumes = {v["name"]: v for v in coordinator["volumes"]}
    mounted = {}
    for m in container["volumeMounts"]:
        if m["mountPath"].startswith("/run/ipjms/directory/"):
            org = m["mountPath"].rsplit("/", 1)[1]
            mounted[org] = volumes[m["name"]]["configMap"]["name"]
    assert set(mounted) == node_orgs | {"org-authority"}
    for org, cm in mounted.items():
        assert cm.startswith(f"directory-{org}"), (org, cm)


def test_generated_directory_entries_parse(k8s_dir: Path) -> None:
    """gen-secrets.sh writes one directory entry per organisation that the coordinator's own
    parser accepts, with public certificates only."""
    from coordinator.registration import records_from_toml

    entries = sorted(k8s_dir.glob("**/secrets/directory/*/directory.toml"))
    orgs = {}
    for entry in entries:
        assert not list(entry.parent.glob("*.key.pem")), f"{entry.parent} holds a private key"
        (record,) = records_from_toml(entry)
        orgs[record.org_id] = record
        assert record.org_id == entry.parent.name
    assert set(orgs) == {
        "org-authority",
        "org-tertiary",
        "org-clinic-a",
        "org-clinic-b",
        "org-clinic-c",
    }
    assert orgs["org-authority"].level == "authority"
    assert orgs["org-tertiary"].endpoints == [
        {"kind": "fhir", "url": "https://node-tertiary:8080/fhir"}
    ]


def test_superlink_admits_exactly_the_node_organisations(docs: list[dict[str, Any]]) -> None:
    configs = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    templates = pod_templates(docs)
    node_orgs = {
        configs[tpl["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]][
            "IPJMS_NODE_ORG_ID"
        ]
        for name, tpl in templates.items()
        if name.startswith("node-")
    }
    spec = templates["superlink"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert set(env["IPJMS_FL_AUTHORIZE"].split()) == node_orgs
    mounted = {
        m["mountPath"].rsplit("/", 1)[1]
        for m in container["volumeMounts"]
        if m["mountPath"].startswith(env["IPJMS_DIRECTORY_DIR"] + "/")
    }
    assert mounted == node_orgs
    # and each SuperNode holds its own client key, never the node's database password
    for name, tpl in templates.items():
        if name.startswith("supernode-"):
            secrets = {v["name"]: v["secret"] for v in tpl["spec"]["volumes"] if "secret" in v}
            assert "db-password" not in secrets, name
            assert secrets["fl-client"]["items"] == [{"key": "key.pem", "path": "key.pem"}]
            assert secrets["fl-client"]["secretName"].startswith(f"fl-client-{name[10:]}")


def test_services_select_their_workloads(docs: list[dict[str, Any]]) -> None:
    """Every Service selects exactly one workload, and every StatefulSet's serviceName exists."""
    templates = pod_templates(docs)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, svc in services.items():
        selected = [
            w
            for w, tpl in templates.items()
            if selector_matches(svc["spec"]["selector"], tpl["metadata"]["labels"])
        ]
        assert selected == [name], f"Service {name} selects {selected}"
    for d in docs:
        if d["kind"] == "StatefulSet":
            assert d["spec"]["serviceName"] in services, d["metadata"]["name"]


def test_regional_ca_key_is_kept_encrypted(k8s_dir: Path, tmp_path: Path) -> None:
    """gen-secrets.sh creates the CA key encrypted with $IPJMS_CA_PASSPHRASE and refuses to run
    without one; nothing of the CA key reaches the Kubernetes secrets folders."""
    import os

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_pem = (k8s_dir.parent / "regional-ca" / "ca.key.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem
    with pytest.raises(TypeError):  # a password is required
        load_pem_private_key(key_pem, password=None)
    assert load_pem_private_key(key_pem, password=b"test CA passphrase")
    assert not [p for p in k8s_dir.rglob("ca.key.pem")]
    env = {k: v for k, v in os.environ.items() if k != "IPJMS_CA_PASSPHRASE"}
    done = subprocess.run(
        ["sh", str(k8s_dir / "gen-secrets.sh"), "--ca-dir", str(tmp_path / "ca")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 64 and "IPJMS_CA_PASSPHRASE" in done.stderr
    assert not (tmp_path / "ca").exists()


def test_the_authority_holds_no_organisation_private_key(k8s_dir: Path) -> None:
    """Organisations make their own keys (issue 22): after gen-secrets.sh the CA folder holds
    the organisations' certificate requests and the certificates it signed, and no private key
    but its own (encrypted); each organisation's keys exist only in its own credentials folder."""
    from cryptography import x509

    from trust.certificate_requests import read_request

    ca = k8s_dir.parent / "regional-ca"
    private = sorted(
        str(p.relative_to(ca))
        for p in ca.rglob("*")
        if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
    )
    assert private == ["ca.key.pem"]
    orgs = ["org-authority", "org-consent", "org-pseudonym", "org-tertiary", "org-clinic-a",
            "org-clinic-b"]  # fmt: skip
    for org in [*orgs, "org-clinic-c"]:
        request = read_request((ca / "requests" / f"{org}.request.pem").read_bytes())
        assert request.org_id == org
        secrets = k8s_dir / ("overlays/add-node" if org == "org-clinic-c" else "base") / "secrets"
        tls = x509.load_pem_x509_certificate((secrets / "orgs" / org / "tls.cert.pem").read_bytes())
        assert tls.public_key() == request.tls_key, org  # the key the organisation made
        assert not (secrets / "orgs" / org / "pending").exists()
    script = (k8s_dir / "gen-secrets.sh").read_text()
    assert "pki issue" not in script  # the CA-side key generation


@pytest.mark.parametrize("variant", ["base", "add-node"])
def test_kustomize_denies_egress_by_default_and_hides_the_control_api(
    variant: str, rendered
) -> None:  # type: ignore[no-untyped-def]
    """The local packaging too (issue 22: "no egress policy"): every pod is selected by a
    default-deny ingress and egress policy, no egress rule opens every destination or every pod,
    the SuperLink's Control API is on loopback and in no Service or policy. The same check
    (hardening_rules.network_policy_gaps) as the Helm chart's, shown failing on its gap."""
    import copy

    from hardening_rules import network_policy_gaps, policy_selects

    docs = rendered[variant]
    assert network_policy_gaps(docs) == []
    no_deny = [d for d in copy.deepcopy(docs) if d["metadata"]["name"] != "default-deny-egress"]
    gaps = network_policy_gaps(no_deny)
    assert gaps and all("no default-deny egress policy" in g for g in gaps), gaps
    # databases may open no connection but DNS: only the DNS policy allows them any egress
    db_labels = next(
        t["metadata"]["labels"] for n, t in pod_templates(docs).items() if n.startswith("db-")
    )
    allowing = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"].get("egress") and policy_selects(d, db_labels)
    }
    assert allowing == {"allow-dns-egress"}, allowing


@pytest.mark.parametrize("variant", ["base", "add-node"])
def test_kustomize_serves_every_http_hop_over_tls(variant: str, rendered) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: node and registry HTTP was plaintext inside the namespace (the SuperNode reading
    patient data from its node's FHIR API included). The chart's plaintext_hops check on the
    Kustomize render: what remains is only that its databases are hand-written rather than
    CloudNativePG (their TLS is checked by test_kustomize_databases_serve_tls_only); every
    database URL is verify-full."""
    import copy

    from hardening_rules import plaintext_hops

    def not_database(findings: list[str]) -> list[str]:
        database = ("a hand-written PostgreSQL", "have no TLS")
        return [f for f in findings if not any(d in f for d in database)]

    docs = rendered[variant]
    findings = plaintext_hops(docs)
    assert not_database(findings) == []
    assert "no CloudNativePG Cluster: the databases have no TLS" in findings  # the known gap
    broken = copy.deepcopy(docs)
    cfg = next(
        d["data"]
        for d in broken
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("node-tertiary-")
    )
    cfg["IPJMS_FHIR_URL"] = "http://node-tertiary:8080"
    cfg["IPJMS_HTTP_TLS"] = "0"
    assert any("IPJMS_FHIR_URL=http://node-tertiary:8080" in f for f in plaintext_hops(broken))
    assert any("node-tertiary: serves plaintext HTTP" in f for f in plaintext_hops(broken))


@pytest.mark.parametrize("variant", ["base", "add-node"])
def test_kustomize_databases_serve_tls_only(variant: str, rendered) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: "PostgreSQL connections have no TLS" — the Kustomize base's hand-written
    StatefulSets now run ssl=on with a CA-signed server certificate, a pg_hba of hostssl +
    scram-sha-256 only, and every client URL is verify-full against the regional CA. Each
    breakage below is a gap the check must name."""
    import copy

    from hardening_rules import hand_written_postgres_gaps, plaintext_hops

    docs = rendered[variant]
    dbs = [n for n, t in pod_templates(docs).items() if n.startswith("db-")]
    assert len(dbs) == (7 if variant == "add-node" else 6), dbs
    assert hand_written_postgres_gaps(docs) == []
    urls = [f for f in plaintext_hops(docs) if "verify the database" in f]
    assert urls == []

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(docs)
        change(copy_)
        return [*hand_written_postgres_gaps(copy_), *plaintext_hops(copy_)]

    def db(copy_: list[dict[str, Any]], name: str = "db-tertiary") -> dict[str, Any]:
        return next(
            d for d in copy_ if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name
        )

    def ssl_off(c: list[dict[str, Any]]) -> None:
        args = db(c)["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index("ssl=on")] = "ssl=off"

    def plaintext_hba(c: list[dict[str, Any]]) -> None:
        cm = next(
            d
            for d in c
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("db-hba-clinic-a")
        )
        cm["data"]["pg_hba.conf"] += "host all all 0.0.0.0/0 scram-sha-256\n"

    def readable_key(c: list[dict[str, Any]]) -> None:
        tls = next(v for v in db(c)["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
        tls["secret"]["defaultMode"] = 0o644

    def plain_url(c: list[dict[str, Any]]) -> None:
        cm = next(
            d
            for d in c
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("coordinator-")
        )
        cm["data"]["IPJMS_DB_URL"] = "postgresql://ipjms@db-coordinator:5432/ipjms?sslmode=require"

    assert "db-tertiary: PostgreSQL without ssl=on" in broken(ssl_off)
    assert "db-clinic-a: pg_hba admits host connections (not TLS only)" in broken(plaintext_hba)
    assert any("db-tertiary: the TLS key is not a Secret" in f for f in broken(readable_key))
    assert any("IPJMS_DB_URL does not verify the database" in f for f in broken(plain_url))


def test_supernode_data_is_a_persistent_volume(docs: list[dict[str, Any]]) -> None:
    """A SuperNode's /data holds its privacy-budget ledger (privacy_budget.db) and the pseudonyms
    it obtained (pseudonyms.db): in every topology it is a claim of its own — a PVC in the render
    or a StatefulSet's volumeClaimTemplate, ReadWriteOnce — never an emptyDir that a new pod
    loses, and the workload is one replica never run twice at once (the ledger is one SQLite
    file)."""
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    supernodes = {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        and _component(d["spec"]["template"]) == "supernode"
    }
    assert len(supernodes) >= len(BASE_NODES)
    used: dict[str, str] = {}
    for name, workload in supernodes.items():
        spec = workload["spec"]
        pod = spec["template"]["spec"]
        mount = next(
            m for c in pod["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/data"
        )
        volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
        if volume is None:  # a StatefulSet's own claim
            templates = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
            assert mount["name"] in templates, f"{name}: /data is backed by nothing"
            claim = templates[mount["name"]]
        else:
            assert "persistentVolumeClaim" in volume, f"{name}: /data is {volume}"
            claim_name = volume["persistentVolumeClaim"]["claimName"]
            assert claim_name in claims, f"{name}: claim {claim_name} is not in the render"
            assert used.setdefault(claim_name, name) == name, f"{claim_name} shared"
            claim = claims[claim_name]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], name
        assert claim["spec"]["resources"]["requests"]["storage"], name
        assert spec["replicas"] == 1, name
        if workload["kind"] == "Deployment":
            assert spec["strategy"]["type"] == "Recreate", name


# --- the pseudonymisation authority (issue 23) ----------------------------------------------------


def _component(tpl: dict[str, Any]) -> str:
    return str(tpl["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def _pod_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    from hardening_rules import _env

    return _env(docs, container)


def authority_workload(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    found = [(n, t) for n, t in pod_templates(docs).items() if _component(t) == "pseudonym"]
    assert len(found) == 1, f"pseudonymisation authorities: {[n for n, _ in found]}"
    return found[0]


def linkage_key_gaps(docs: list[dict[str, Any]]) -> list[str]:
    """No workload is given a linkage key (a variable, a volume, a mount or a Secret naming
    one); nodes and SuperNodes get the authority's Service over https instead."""
    from urllib.parse import urlsplit

    found: list[str] = []
    name, _tpl = authority_workload(docs)
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for d in docs:
        if d["kind"] in ("Secret", "ConfigMap") and "linkage" in d["metadata"]["name"]:
            found.append(f"{d['kind']} {d['metadata']['name']}: a linkage key")
    for workload, tpl in pod_templates(docs).items():
        for v in tpl["spec"].get("volumes", []):
            if "linkage" in str(v):
                found.append(f"{workload}: volume {v['name']} holds a linkage key")
        for c in tpl["spec"]["containers"]:
            env = _pod_env(docs, c)
            for key, value in env.items():
                if "LINKAGE" in key.upper() or "linkage" in str(value):
                    found.append(f"{workload}: {key} names a linkage key")
            for m in c.get("volumeMounts", []):
                if "linkage" in m["mountPath"]:
                    found.append(f"{workload}: mounts {m['mountPath']}")
            if _component(tpl) in ("node", "supernode"):
                url = urlsplit(env.get("IPJMS_NODE_PSEUDONYM_URL", ""))
                if url.scheme != "https" or url.hostname != name or name not in services:
                    found.append(f"{workload}: IPJMS_NODE_PSEUDONYM_URL is not https://{name}:…")
    return found


def test_every_topology_runs_the_pseudonymisation_authority(docs: list[dict[str, Any]]) -> None:
    """Issue 23: the Kustomize base and the chart ran no authority. Now each runs it as its own
    StatefulSet: one replica (its key ring is on its volume), its own volume and database, its
    own TLS certificate (the Secret of its organisation, TLS files only), HTTPS probes, the
    production budget, and the region's node organisations as its clients."""
    from trust.oprf_service import DEFAULT_BUDGET_BURST, DEFAULT_BUDGET_PER_HOUR

    name, tpl = authority_workload(docs)
    workload = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name)
    assert workload["spec"]["replicas"] == 1
    assert [c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]] == ["data"]
    (c,) = tpl["spec"]["containers"]
    assert c["args"] == ["pseudonym"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    env = _pod_env(docs, c)
    assert env["IPJMS_HTTP_TLS"] == "1" and env["IPJMS_PUBLIC_URL"] == f"https://{name}:8080"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # its own database: a URL to db-pseudonym (verify-full: the plaintext_hops checks)
    assert env["IPJMS_DB_URL"].startswith(f"postgresql://ipjms@db-{name}"), env["IPJMS_DB_URL"]
    assert float(env["IPJMS_PSEUDONYM_BUDGET_PER_HOUR"]) == DEFAULT_BUDGET_PER_HOUR
    assert float(env["IPJMS_PSEUDONYM_BUDGET_BURST"]) == DEFAULT_BUDGET_BURST
    configs = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    node_orgs = {
        configs[t["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]][
            "IPJMS_NODE_ORG_ID"
        ]
        for n, t in pod_templates(docs).items()
        if _component(t) == "node"
    }
    assert set(env["IPJMS_PSEUDONYM_ALLOW"].split()) == node_orgs
    org = next(v["secret"] for v in tpl["spec"]["volumes"] if v["name"] == "org")
    assert org["secretName"].startswith("org-pseudonym-credentials")
    assert {i["key"] for i in org["items"]} == {"tls.cert.pem", "tls.key.pem"}


def test_no_node_or_supernode_is_given_a_linkage_key(docs: list[dict[str, Any]]) -> None:
    """Issue 23: every node and SuperNode mounted the Secret `linkage-key`. None may now, and
    each points at the authority over https; each breakage below is a gap the check names."""
    assert linkage_key_gaps(docs) == []

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(docs)
        change(copy_)
        return linkage_key_gaps(copy_)

    def tpl(c: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
        return next(t for n, t in pod_templates(c).items() if n.startswith(prefix))

    def linkage_volume(c: list[dict[str, Any]]) -> None:
        spec = tpl(c, "supernode-clinic-a")["spec"]
        spec["volumes"].append({"name": "linkage", "secret": {"secretName": "linkage-key"}})

    def plain_url(c: list[dict[str, Any]]) -> None:
        cm = next(
            d
            for d in c
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("node-tertiary")
        )
        cm["data"]["IPJMS_NODE_PSEUDONYM_URL"] = "http://pseudonym:8080"

    assert any("volume linkage holds a linkage key" in f for f in broken(linkage_volume))
    assert any("IPJMS_NODE_PSEUDONYM_URL is not https://pseudonym" in f for f in broken(plain_url))


def authority_reach_gaps(docs: list[dict[str, Any]]) -> list[str]:
    """Who may open a connection to the authority's port, from both sides' policies: the pods
    whose egress allows it and whose labels its ingress admits. Only nodes and SuperNodes, all
    of them; no other namespace (ingress controller, scraper)."""
    from hardening_rules import _labels_match, _pods_labels, policy_selects

    found: list[str] = []
    name, tpl = authority_workload(docs)
    target = tpl["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def port_ok(rule: dict[str, Any]) -> bool:
        ports = rule.get("ports")
        return not ports or any(p.get("port") in (8080, "http") for p in ports)

    def peers_match(peers: list[dict[str, Any]] | None, labels: dict[str, str]) -> bool:
        if not peers:
            return True
        return any(
            "namespaceSelector" not in p and _labels_match(p.get("podSelector", {}), labels)
            for p in peers
        )

    ingress_rules = [
        rule
        for p in policies
        if policy_selects(p, target) and "Ingress" in p["spec"].get("policyTypes", [])
        for rule in p["spec"].get("ingress", [])
        if port_ok(rule)
    ]
    for rule in ingress_rules:
        for peer in rule.get("from") or [{}]:
            if "namespaceSelector" in peer or "ipBlock" in peer:
                found.append(f"{name}: admits another namespace or address ({peer})")
    for pod, labels in _pods_labels(docs).items():
        if pod == name:
            continue
        admitted = any(peers_match(r.get("from"), labels) for r in ingress_rules)
        leaves = any(
            port_ok(rule) and peers_match(rule.get("to"), target)
            for p in policies
            if policy_selects(p, labels) and "Egress" in p["spec"].get("policyTypes", [])
            for rule in p["spec"].get("egress", [])
        )
        component = labels.get("app.kubernetes.io/component")
        if component in ("node", "supernode"):
            if not (admitted and leaves):
                found.append(f"{pod}: cannot reach the authority")
            continue
        # both sides closed to everyone else: the authority's ingress and the caller's egress
        if admitted:
            found.append(f"{pod} ({component}) is admitted by the authority's ingress")
        if leaves:
            found.append(f"{pod} ({component}) may connect to the authority (egress)")
    return found


def test_only_nodes_and_supernodes_reach_the_authority(docs: list[dict[str, Any]]) -> None:
    """The coordinator and the registry hold every pseudonym: with OPRF access they could test
    guessed identifiers. The network policies let nodes and SuperNodes reach the authority and
    no one else; each breakage below is a gap the check names."""
    assert authority_reach_gaps(docs) == []
    name, _tpl = authority_workload(docs)

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(docs)
        change(copy_)
        return authority_reach_gaps(copy_)

    def tier_service(c: list[dict[str, Any]]) -> None:  # the regional services' open policies
        tpl = next(t for n, t in pod_templates(c).items() if n == name)
        tpl["metadata"]["labels"]["ipjms.io/tier"] = "service"

    def no_ingress_policy(c: list[dict[str, Any]]) -> None:
        for d in c:
            if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] in (
                "pseudonym-ingress",
                name,
            ):
                d["spec"]["ingress"] = [{"from": [{"podSelector": {}}]}]

    found = broken(tier_service)
    assert any("(coordinator) is admitted by the authority's ingress" in f for f in found), found
    assert any("admits another namespace" in f for f in found), found
    found = broken(no_ingress_policy)
    assert any("(consent) is admitted by the authority's ingress" in f for f in found), found


def test_the_authority_key_is_in_no_secret(
    k8s_dir: Path, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """Its OPRF key is made by the authority itself on its own volume: gen-secrets.sh writes no
    pseudonym or linkage key, no Secret in any render carries one, and the authority's own
    credentials Secret is mounted by no other workload."""
    generated = [p for p in k8s_dir.rglob("secrets/**/*") if p.is_file()]
    assert generated, "gen-secrets.sh wrote nothing"
    assert not [p for p in generated if "linkage" in p.name or "oprf" in p.name]
    for variant, docs in rendered.items():
        name, _tpl = authority_workload(docs)
        for d in docs:
            if d["kind"] == "Secret":
                keys = set(d.get("data", {})) | set(d.get("stringData", {}))
                assert not [k for k in keys if "linkage" in k or "oprf" in k], (variant, d)
        for workload, tpl in pod_templates(docs).items():
            if workload == name:
                continue
            for v in tpl["spec"].get("volumes", []):
                secret = (v.get("secret") or {}).get("secretName", "")
                assert not secret.startswith("org-pseudonym"), (variant, workload, secret)
