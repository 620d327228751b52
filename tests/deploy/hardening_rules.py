"""Static checks of rendered Kubernetes manifests for the gaps issue 22 lists (pure functions:
each takes the rendered documents and returns its findings, one string each; none is good).

Used by test_deploy_hardening.py on the Helm chart's production render, and on deliberately
broken copies of it, so every check is shown to fail on the gap it names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

Doc = dict[str, Any]

# What each component may mount from its organisation's credentials Secret (None: every key,
# because trust.pki.load_org reads all of them).
CREDENTIAL_KEYS: dict[str, set[str] | None] = {
    "supernode": {"org.json", "ca.cert.pem", "signing.cert.pem", "signing.key.pem"},
    "consent": {"tls.cert.pem", "tls.key.pem"},
    # the pseudonymisation authority serves HTTPS and signs nothing (its OPRF key is its own)
    "pseudonym": {"tls.cert.pem", "tls.key.pem"},
    "node": None,
    "coordinator": None,
    "superlink": None,
}
# Ports that carry no patient data: a supervisor's /healthz and /metrics.
NON_DATA_PORT_NAMES = {"metrics"}
CONTROL_PORT = 9093
SERVICE_COMPONENTS = {"node", "consent", "coordinator", "pseudonym"}


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(workload name, its pod template, the workload) of Deployments, StatefulSets, Jobs."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"], d


def _labels_match(selector: Doc, labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


def _env(docs: list[Doc], container: Doc) -> dict[str, str]:
    configs = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        env.update(configs.get(ref["configMapRef"]["name"], {}))
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def _pods_labels(docs: list[Doc]) -> dict[str, dict[str, str]]:
    """Every pod kind's labels: workload templates and CloudNativePG instances."""
    out = {n: tpl["metadata"].get("labels", {}) for n, tpl, _w in pod_specs(docs)}
    for d in docs:
        if d["kind"] == "Cluster":
            labels = dict(d["spec"].get("inheritedMetadata", {}).get("labels", {}))
            out[d["metadata"]["name"]] = {**labels, "cnpg.io/cluster": d["metadata"]["name"]}
    return out


# --- 1. plaintext hops ---------------------------------------------------------------------------


def plaintext_hops(docs: list[Doc]) -> list[str]:
    """Every URL a service is given is https://, every database URL verify-full, every IPJMS
    HTTP service serves TLS and is probed over HTTPS, every PostgreSQL refuses plaintext."""
    found: list[str] = []
    for name, tpl, _w in pod_specs(docs):
        for c in tpl["spec"]["containers"]:
            env = _env(docs, c)
            for key, value in env.items():
                if re.match(r"^http://", str(value)):
                    found.append(f"{name}: {key}={value} is plaintext HTTP")
                found += database_url_gaps(name, key, str(value))
            ports = {p["name"] for p in c.get("ports", [])}
            if "http" in ports:  # an IPJMS HTTP service (FHIR API, registry, status API)
                if env.get("IPJMS_HTTP_TLS") != "1":
                    found.append(f"{name}: serves plaintext HTTP (IPJMS_HTTP_TLS is not 1)")
                if not env.get("SSL_CERT_FILE"):
                    found.append(f"{name}: its HTTPS clients do not trust the regional CA")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    get = c.get(probe, {}).get("httpGet")
                    if get and get.get("scheme") != "HTTPS":
                        found.append(f"{name}: {probe} over plaintext HTTP")
    for d in docs:
        if d["kind"] == "Service":
            for port in d["spec"].get("ports", []):
                if port.get("name") == "postgres":
                    found.append(f"Service {d['metadata']['name']}: a hand-written PostgreSQL")
        if d["kind"] == "Cluster":
            hba = d["spec"].get("postgresql", {}).get("pg_hba", [])
            for net in ("0.0.0.0/0", "::/0"):
                if f"hostnossl all all {net} reject" not in hba:
                    found.append(f"Cluster {d['metadata']['name']}: plaintext from {net} allowed")
    if not any(d["kind"] == "Cluster" for d in docs):
        found.append("no CloudNativePG Cluster: the databases have no TLS")
    return found


# --- 1b. PostgreSQL TLS, the same rules for every packaging ---------------------------------


def database_url_gaps(where: str, key: str, value: str) -> list[str]:
    """A database URL must verify the server: TLS with the name checked against a given CA."""
    if not value.startswith(("postgresql://", "postgres://")):
        return []
    query = dict(q.partition("=")[::2] for q in urlsplit(value).query.split("&") if q)
    if query.get("sslmode") != "verify-full" or not query.get("sslrootcert"):
        return [f"{where}: {key} does not verify the database (verify-full)"]
    return []


def postgres_server_tls_gaps(where: str, args: list[str]) -> list[str]:
    """A hand-written PostgreSQL runs with ssl=on, its certificate and key, and its own pg_hba
    (``-c name=value`` arguments)."""
    settings = dict(a.partition("=")[::2] for a in args if "=" in a)
    found = [] if settings.get("ssl") == "on" else [f"{where}: PostgreSQL without ssl=on"]
    for setting in ("ssl_cert_file", "ssl_key_file", "hba_file"):
        if not settings.get(setting):
            found.append(f"{where}: PostgreSQL without {setting}")
    return found


def pg_hba_gaps(where: str, lines: list[str], user: str) -> list[str]:
    """Over the network only ``hostssl`` lines for the service's user with scram-sha-256 (no
    ``host``/``hostnossl``: a plaintext connection then matches no line and is refused); ``local``
    (the container's own socket) only with scram-sha-256."""
    found: list[str] = []
    network = 0
    for raw in lines:
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        kind, method = fields[0], fields[-1]
        if method != "scram-sha-256":
            found.append(f"{where}: pg_hba line '{' '.join(fields)}' does not use scram-sha-256")
        if kind == "local":
            continue
        if kind != "hostssl":
            found.append(f"{where}: pg_hba admits {kind} connections (not TLS only)")
        elif fields[2] != user:
            found.append(f"{where}: pg_hba admits user {fields[2]} (only {user})")
        network += 1
    if not network:
        found.append(f"{where}: pg_hba admits no TLS connection")
    return found


def _mount_source(tpl: Doc, container: Doc, path: str) -> tuple[Doc, str]:
    """The volume behind ``path`` in ``container`` and the file name inside it."""
    for m in container.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == m["name"])
            return volume, path[len(prefix) :]
    raise LookupError(path)


def hand_written_postgres_gaps(docs: list[Doc]) -> list[str]:
    """Every hand-written PostgreSQL (a container of the postgres image) serves TLS only: ssl=on,
    its key from a Secret no one but root and the postgres group can read (PostgreSQL refuses a
    key others can read; root-owned, group read at most), pg_hba hostssl + scram only."""
    found: list[str] = []
    configs = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for name, tpl, _w in pod_specs(docs):
        for c in tpl["spec"]["containers"]:
            if not c["image"].startswith("postgres"):
                continue
            args = [*c.get("command", []), *c.get("args", [])]
            gaps = postgres_server_tls_gaps(name, args)
            found += gaps
            if gaps:
                continue
            settings = dict(a.partition("=")[::2] for a in args if "=" in a)
            env = _env(docs, c)
            key_volume, key_file = _mount_source(tpl, c, settings["ssl_key_file"])
            secret = key_volume.get("secret") or {}
            modes = [i.get("mode") for i in secret.get("items", []) if i["path"] == key_file]
            mode = next((m for m in modes if m is not None), secret.get("defaultMode", 0o644))
            if not secret or mode & 0o037:
                found.append(f"{name}: the TLS key is not a Secret readable by owner/group only")
            hba_volume, hba_file = _mount_source(tpl, c, settings["hba_file"])
            hba = configs.get((hba_volume.get("configMap") or {}).get("name", ""), {})
            if hba_file not in hba:
                found.append(f"{name}: pg_hba {hba_file} is not in a ConfigMap")
                continue
            found += pg_hba_gaps(name, hba[hba_file].splitlines(), env.get("POSTGRES_USER", ""))
    return found


# --- 2. network policies -------------------------------------------------------------------------


def policy_selects(policy: Doc, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector selects a pod with these labels."""
    return _labels_match(policy["spec"]["podSelector"], labels)


def network_policy_gaps(docs: list[Doc]) -> list[str]:
    """Default deny both ways for every pod, no rule that opens egress to everything, and the
    SuperLink's Control API exposed by no Service, container port or ingress rule."""
    found: list[str] = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = _pods_labels(docs)
    for pod, labels in pods.items():
        for direction in ("Ingress", "Egress"):
            deny_all = [
                p
                for p in policies
                if policy_selects(p, labels)
                and direction in p["spec"].get("policyTypes", [])
                and direction.lower() not in p["spec"]
            ]
            if not deny_all:
                found.append(f"{pod}: no default-deny {direction.lower()} policy selects it")
    for p in policies:
        for rule in p["spec"].get("egress", []):
            if not rule.get("to"):
                found.append(f"{p['metadata']['name']}: an egress rule to every destination")
            for peer in rule.get("to", []):
                if peer.get("podSelector") == {} and "namespaceSelector" not in peer:
                    found.append(f"{p['metadata']['name']}: egress to every pod")
        for rule in p["spec"].get("ingress", []):
            if any(port.get("port") == CONTROL_PORT for port in rule.get("ports", [])):
                found.append(f"{p['metadata']['name']}: admits the SuperLink Control API")
    for d in docs:
        if d["kind"] == "Service":
            for port in d["spec"].get("ports", []):
                if (
                    CONTROL_PORT in (port.get("port"), port.get("targetPort"))
                    or port.get("targetPort") == "control"
                ):
                    found.append(f"Service {d['metadata']['name']} exposes the Control API")
    for name, tpl, _w in pod_specs(docs):
        for c in tpl["spec"]["containers"]:
            if any(p["containerPort"] == CONTROL_PORT for p in c.get("ports", [])):
                found.append(f"{name}: declares the Control API port")
            env = _env(docs, c)
            if "superlink" in c.get("args", []) and env.get("IPJMS_CONTROL_HOST") != "127.0.0.1":
                found.append(f"{name}: the Control API is not bound to loopback")
    return found


# --- 3. key mounts ------------------------------------------------------------------------------


def broad_key_mounts(docs: list[Doc]) -> list[str]:
    """Each process mounts only the credential files it reads; a CA Secret only its
    certificate (CloudNativePG's also holds the CA's private key)."""
    found: list[str] = []
    for name, tpl, _w in pod_specs(docs):
        component = tpl["metadata"]["labels"].get("app.kubernetes.io/component", "")
        for v in tpl["spec"].get("volumes", []):
            secret = v.get("secret")
            if not secret:
                continue
            keys = {i["key"] for i in secret.get("items", [])} or None
            if secret["secretName"].endswith("-credentials"):
                allowed = CREDENTIAL_KEYS.get(component)
                if allowed is not None and (keys is None or not keys <= allowed):
                    extra = "every key" if keys is None else ", ".join(sorted(keys - allowed))
                    found.append(f"{name}: mounts {extra} of {secret['secretName']}")
            if secret["secretName"].endswith("-ca") and keys != {"ca.crt"}:
                found.append(f"{name}: mounts more than ca.crt of {secret['secretName']}")
            if secret["secretName"].endswith("-app") and keys != {"password"}:
                found.append(f"{name}: mounts more than the password of {secret['secretName']}")
        for c in tpl["spec"]["containers"]:
            if "PGPASSWORD" in _env(docs, c):
                found.append(f"{name}: a database password in the environment")
    return found


# --- 4. availability ----------------------------------------------------------------------------


def availability_gaps(docs: list[Doc]) -> list[str]:
    """Replicated workloads have a PDB and anti-affinity; liveness never asks the database;
    CloudNativePG spreads its instances; the coordinator's gRPC Service is headless (per-request
    balancing by the clients)."""
    found: list[str] = []
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for name, tpl, workload in pod_specs(docs):
        labels = tpl["metadata"].get("labels", {})
        if workload["kind"] != "Job" and int(workload["spec"].get("replicas", 1)) > 1:
            if not any(_labels_match(p["spec"]["selector"], labels) for p in pdbs):
                found.append(f"{name}: {workload['spec']['replicas']} replicas and no PDB")
            anti = tpl["spec"].get("affinity", {}).get("podAntiAffinity")
            if not anti:
                found.append(f"{name}: replicas without pod anti-affinity")
        for c in tpl["spec"]["containers"]:
            live = c.get("livenessProbe", {})
            component = labels.get("app.kubernetes.io/component")
            if component in SERVICE_COMPONENTS and live.get("httpGet", {}).get("path") != "/livez":
                found.append(f"{name}: liveness asks {live.get('httpGet', {}).get('path')}")
            if "exec" in live and "pg_isready" in " ".join(live["exec"]["command"]):
                found.append(f"{name}: a hand-written database's liveness")
    for d in docs:
        if d["kind"] == "Cluster":
            spec = d["spec"]
            if int(spec.get("instances", 1)) < 2:
                found.append(f"Cluster {d['metadata']['name']}: a single instance")
            if not spec.get("affinity", {}).get("enablePodAntiAffinity"):
                found.append(f"Cluster {d['metadata']['name']}: instances not spread")
        coordinator = d["kind"] == "Service" and d["metadata"]["name"].endswith("coordinator")
        if coordinator and d["spec"].get("clusterIP") != "None":
            found.append("coordinator Service is a ClusterIP: gRPC streams pin to one replica")
    return found


# --- 5. backups ----------------------------------------------------------------------------------

_CRON6 = re.compile(r"^(\S+\s+){5}\S+$")


def backup_gaps(docs: list[Doc]) -> list[str]:
    """Every database a CloudNativePG Cluster with encrypted WAL archiving and base backups, a
    retention policy and a ScheduledBackup (six-field cron) of it."""
    found: list[str] = []
    clusters = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Cluster"}
    scheduled = {d["spec"]["cluster"]["name"]: d for d in docs if d["kind"] == "ScheduledBackup"}
    for name, cluster in clusters.items():
        store = cluster["spec"].get("backup", {}).get("barmanObjectStore")
        if not store:
            found.append(f"{name}: no backup object store")
            continue
        for part in ("wal", "data"):
            if store.get(part, {}).get("encryption") not in ("AES256", "aws:kms"):
                found.append(f"{name}: {part} backups not encrypted")
        if not cluster["spec"]["backup"].get("retentionPolicy"):
            found.append(f"{name}: no retention policy")
        job = scheduled.get(name)
        if job is None:
            found.append(f"{name}: no ScheduledBackup")
        elif not _CRON6.match(job["spec"]["schedule"]):
            found.append(f"{name}: ScheduledBackup schedule {job['spec']['schedule']!r}")
    for name, tpl, w in pod_specs(docs):
        if tpl["metadata"]["labels"].get("app.kubernetes.io/component") == "database":
            found.append(f"{name}: a hand-written {w['kind']} database (no backups, no PITR)")
    return found


# --- 6. images -----------------------------------------------------------------------------------

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# The project's own image: built from this repository (compose builds it locally); deployed by
# digest with the chart's image.digest.
OWN_IMAGE = re.compile(r"^(\$\{IPJMS_IMAGE:-)?([^/]+/)*ipjms[:@]")


def unpinned_images(images: list[tuple[str, str]]) -> list[str]:
    """(where, image reference) pairs whose third-party image is not pinned by digest (a tag
    can be moved to other content; a digest cannot)."""
    return [
        f"{where}: {image} is not pinned by digest"
        for where, image in images
        if not OWN_IMAGE.match(image) and not _DIGEST.search(image)
    ]


def manifest_images(docs: list[Doc]) -> list[tuple[str, str]]:
    """Every container image of the workloads and every CloudNativePG Cluster's imageName."""
    out = [
        (name, c["image"])
        for name, tpl, _w in pod_specs(docs)
        for c in [*tpl["spec"].get("initContainers", []), *tpl["spec"]["containers"]]
    ]
    out += [(d["metadata"]["name"], d["spec"]["imageName"]) for d in docs if d["kind"] == "Cluster"]
    return out
