"""deploy/compose.yaml: the published Compose Specification schema, then the rules that matter."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_files import COMPOSE, IMAGE_UID, load_compose, validate_compose_schema

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PASSPHRASE|(^|_)KEY($|_)", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services_with(compose: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in compose["services"].items()
        if (s.get("labels") or {}).get("ipjms.role") == role
    }


def env(service: dict[str, Any]) -> dict[str, str]:
    e = service.get("environment") or {}
    assert isinstance(e, dict), "environment must be a mapping"
    return {k: str(v) for k, v in e.items()}


def volume_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            mounts.append({"type": "volume", "source": source, "target": target})
        else:
            mounts.append(v)
    return mounts


def test_compose_file_valid_against_compose_spec_schema() -> None:
    result = validate_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        # unknown service key
        lambda c: c["services"]["coordinator"].__setitem__("healthchek", {"test": ["NONE"]}),
        # wrong type
        lambda c: c["services"]["node-tertiary"].__setitem__("ports", "8081:8080"),
        # invalid depends_on condition
        lambda c: c["services"]["consent"]["depends_on"]["consent-db"].__setitem__(
            "condition", "service_ready"
        ),
    ],
    ids=["unknown-key", "wrong-type", "bad-condition"],
)
def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path, breakage) -> None:  # type: ignore[no-untyped-def]
    broken = load_compose()
    breakage(broken)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = validate_compose_schema(path)
    assert result.returncode != 0, "the schema check accepted a broken compose file"


def test_topology_three_nodes_each_with_own_database_and_supernode(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nodes = services_with(compose, "node")
    levels = sorted(s["labels"]["ipjms.level"] for s in nodes.values())
    assert levels == ["community", "community", "tertiary"]
    for role in ("coordinator", "consent", "superlink", "pseudonym", "pki-bootstrap"):
        assert len(services_with(compose, role)) == 1, role
    db_hosts = set()
    for name, node in nodes.items():
        url = env(node)["IPJMS_DB_URL"]
        host = re.match(r"postgresql://[^@/]+@([^:/]+)", url)
        assert host, f"{name}: IPJMS_DB_URL {url!r} is not a PostgreSQL URL without password"
        db = services[host.group(1)]
        assert db["image"].startswith("postgres:16"), name
        assert db["labels"]["ipjms.owner"] == name, f"{name} uses another service's database"
        db_hosts.add(host.group(1))
        supernodes = [
            s
            for s in services_with(compose, "supernode").values()
            if s["labels"]["ipjms.node"] == name
        ]
        assert len(supernodes) == 1, f"{name} needs exactly one SuperNode"
    assert len(db_hosts) == 3, "every node has its own database"
    # coordinator and consent registry have their own PostgreSQL too
    for svc in ("coordinator", "consent"):
        assert env(services[svc])["IPJMS_DB_URL"].startswith("postgresql://"), svc


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no health check"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name


def test_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    networks = set(compose.get("networks", {}))
    volumes = set(compose.get("volumes", {}))
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = (
                "service_completed_successfully" if dep == "pki-bootstrap" else "service_healthy"
            )
            assert cond["condition"] == expected, f"{name} → {dep}"
        for net in svc.get("networks", []):
            assert net in networks, f"{name} joins undeclared network {net}"
        for m in volume_mounts(svc):
            if m["type"] == "volume":
                assert m["source"] in volumes, f"{name} mounts undeclared volume {m['source']}"
        if name != "pki-bootstrap" and any(m["source"] == "pki" for m in volume_mounts(svc)):
            assert "pki-bootstrap" in (svc.get("depends_on") or {}) or any(
                "pki-bootstrap" in (services[d].get("depends_on") or {})
                for d in (svc.get("depends_on") or {})
            ), f"{name} reads the PKI volume before it is written"


def test_database_networks_are_private_to_their_owner(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for db_name, db in services_with(compose, "database").items():
        owner = db["labels"]["ipjms.owner"]
        assert db.get("networks") == [db_name], f"{db_name} must sit on its own network only"
        assert compose["networks"][db_name].get("internal") is True, db_name
        allowed = {db_name, owner}  # SuperNodes read the store through the node's API
        members = {n for n, s in services.items() if db_name in s.get("networks", [])}
        assert members == allowed, f"{db_name} is reachable from {sorted(members - allowed)}"
        assert not db.get("ports"), f"{db_name} must not publish a port"


def test_no_plaintext_secrets(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in env(svc).items():
            if SECRET_NAME.search(key):
                assert key.endswith(("_FILE", "_PATH", "_DIR")), f"{name}: secret in env {key}"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}: password in {key}"
        assert "env_file" not in svc or all("secret" not in str(f) for f in svc["env_file"]), name
    text = COMPOSE.read_text()
    assert "PRIVATE KEY" not in text
    assert "POSTGRES_PASSWORD:" not in text


def test_pki_volume_each_service_sees_only_its_own_part(compose: dict[str, Any]) -> None:
    services = compose["services"]
    bootstrap = services["pki-bootstrap"]
    assert bootstrap.get("network_mode") == "none"
    orgs = {pair.split("=")[0] for pair in env(bootstrap)["IPJMS_PKI_ORGS"].split()}
    client_keys = env(bootstrap)["IPJMS_PKI_CLIENT_KEYS"].split()
    generated = set(env(bootstrap)["IPJMS_PKI_GENERATED"].split())
    generated |= set(client_keys) | {f"{k}-public" for k in client_keys}
    # The CRL signer alone (besides pki-bootstrap) holds the CA folder: it re-signs the CRL and
    # publishes it to ca-public; it has no network.
    signer = services["crl-signer"]
    assert signer.get("network_mode") == "none"
    assert sorted(
        (m["volume"]["subpath"], m.get("read_only", False)) for m in volume_mounts(signer)
    ) == [
        ("ca", False),
        ("ca-public", False),
    ]
    for name, svc in services.items():
        if name in ("pki-bootstrap", "crl-signer"):
            continue
        for m in volume_mounts(svc):
            if m["source"] != "pki":
                continue
            subpath = (m.get("volume") or {}).get("subpath")
            assert subpath, f"{name} mounts the whole PKI volume (including the CA key)"
            assert m.get("read_only") is True, f"{name} mounts PKI material writable"
            assert not subpath.startswith("ca/") and subpath != "ca", f"{name} sees the CA key"
            kind, _, item = subpath.partition("/")
            if kind in ("orgs", "signing"):
                assert item in orgs, f"{name}: no certificate is issued for {item}"
                assert item == svc["labels"]["ipjms.org"], f"{name} mounts {item}'s keys"
                # a SuperNode signs as its organisation and reads nothing else (issue 22: it
                # mounted the whole key folder, encryption key included)
                is_supernode = svc["labels"]["ipjms.role"] == "supernode"
                assert (kind == "signing") == is_supernode, f"{name} mounts {subpath}"
            elif kind == "secrets":
                assert item in generated, f"{name}: nothing is generated for {item}"
                if svc["labels"]["ipjms.role"] == "supernode":  # its backend client key only
                    own = {f"{svc['labels']['ipjms.node']}-fl"}
                else:  # its database password, its first admin, its client's public key
                    own = {f"{name}-admin", f"{name}-fl-public", *svc.get("networks", [])}
                assert item in own, f"{name} reads {item}"
            elif kind == "directory":  # public certificates of every organisation
                assert svc["labels"]["ipjms.role"] in ("coordinator", "superlink"), name
            elif kind == "db-tls":  # a database's own TLS server certificate and key
                assert svc["labels"]["ipjms.role"] == "database" and item == name, name
            else:
                assert subpath == "ca-public", f"{name}: unexpected PKI part {subpath}"


def test_ipjms_containers_run_unprivileged(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert not svc.get("privileged"), name
        if svc["image"].startswith("postgres"):
            continue
        assert svc.get("user") == f"{IMAGE_UID}:{IMAGE_UID}", name
        assert svc.get("read_only") is True, name
        assert "ALL" in svc.get("cap_drop", []), name


def compose_plaintext_hops(compose: dict[str, Any]) -> list[str]:
    """Every URL a service is given is https://, every IPJMS role that serves or calls HTTP serves
    TLS and trusts the regional CA, and the coordinator's directory lists https:// endpoints."""
    found: list[str] = []
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if str(value).startswith("http://"):
                found.append(f"{name}: {key}={value} is plaintext HTTP")
        role = (svc.get("labels") or {}).get("ipjms.role")
        # the SuperNode serves only its health port (no patient data): a client of HTTPS only
        serves_https = role in ("node", "consent", "coordinator", "pseudonym")
        if serves_https and env.get("IPJMS_HTTP_TLS") != "1":
            found.append(f"{name}: serves plaintext HTTP (IPJMS_HTTP_TLS is not 1)")
        trusts_ca = env.get("SSL_CERT_FILE") == "/run/ipjms/ca/ca.cert.pem"
        if (serves_https or role == "supernode") and not trusts_ca:
            found.append(f"{name}: its HTTPS clients do not trust the regional CA")
    directory = compose["services"]["pki-bootstrap"]["environment"]["IPJMS_PKI_DIRECTORY_TOML"]
    for url in re.findall(r'url = "([^"]+)"', directory):
        if not url.startswith("https://"):
            found.append(f"directory: endpoint {url} is plaintext HTTP")
    return found


def test_every_http_hop_is_tls(compose: dict[str, Any]) -> None:
    """Issue 22: node and registry HTTP — including the SuperNode reading patient data from its
    node's FHIR API — was plaintext inside the Compose network."""
    assert compose_plaintext_hops(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["supernode-clinic-a"]["environment"]["IPJMS_FHIR_URL"] = (
        "http://node-clinic-a:8080"
    )
    del broken["services"]["consent"]["environment"]["IPJMS_HTTP_TLS"]
    assert compose_plaintext_hops(broken) == [
        "consent: serves plaintext HTTP (IPJMS_HTTP_TLS is not 1)",
        "supernode-clinic-a: IPJMS_FHIR_URL=http://node-clinic-a:8080 is plaintext HTTP",
    ]


def test_no_inline_config_in_a_read_only_container(compose: dict[str, Any]) -> None:
    """An inline `configs:` entry cannot be mounted into a read_only container on every Compose
    release ("container rootfs is marked read-only", docker/compose#12031), which made the
    documented minimum version wrong; the coordinator reads the directory pki-bootstrap writes."""
    for name, svc in compose["services"].items():
        assert not (svc.get("read_only") and svc.get("configs")), name
    assert "configs" not in compose


def _hba_lines(script: str) -> list[str]:
    """The pg_hba lines a database's entrypoint writes (its one printf to pg_hba.conf)."""
    line = next(x for x in script.splitlines() if "pg_hba.conf" in x and "printf" in x)
    return re.findall(r"'([^']*)'", line)[1:]  # after the '%s\\n' format


def compose_database_tls_gaps(compose: dict[str, Any]) -> list[str]:
    """Every database serves TLS only (ssl=on, the CA-signed certificate pki-bootstrap made for
    its host name, the key installed 0600 owned by postgres, pg_hba hostssl + scram only) and
    every database URL is verify-full against the regional CA, to a database the service owns."""
    from hardening_rules import database_url_gaps, pg_hba_gaps, postgres_server_tls_gaps

    found: list[str] = []
    services = compose["services"]
    boot = env(services["pki-bootstrap"])
    certified = set(boot.get("IPJMS_PKI_DB_SERVERS", "").split())
    for name, db in services_with(compose, "database").items():
        args = [str(a) for a in db.get("command") or []]
        gaps = postgres_server_tls_gaps(name, args)
        found += gaps
        if gaps:
            continue
        settings = dict(a.partition("=")[::2] for a in args if "=" in a)
        script = "\n".join(str(a) for a in db.get("entrypoint") or [])
        key = settings["ssl_key_file"]
        if not re.search(
            rf"install -m 0600 -o postgres -g postgres \S+ {re.escape(key)}\n", script
        ):
            found.append(f"{name}: its TLS key is not installed 0600 owned by postgres")
        if settings["hba_file"] not in script:
            found.append(f"{name}: its pg_hba is not written by its entrypoint")
        else:
            found += pg_hba_gaps(name, _hba_lines(script), env(db)["POSTGRES_USER"])
        if name not in certified:
            found.append(f"{name}: pki-bootstrap makes no server certificate for it")
        mounts = {(m.get("volume") or {}).get("subpath") for m in volume_mounts(db)}
        if f"db-tls/{name}" not in mounts:
            found.append(f"{name}: does not mount its server certificate")
    databases = services_with(compose, "database")
    for name, svc in services.items():
        url = env(svc).get("IPJMS_DB_URL")
        if url is None:
            continue
        found += database_url_gaps(name, "IPJMS_DB_URL", url)
        host = urlsplit(url).hostname or ""
        if databases.get(host, {}).get("labels", {}).get("ipjms.owner") != name:
            found.append(f"{name}: IPJMS_DB_URL names {host}, not its own database")
        root = dict(q.partition("=")[::2] for q in urlsplit(url).query.split("&")).get(
            "sslrootcert", ""
        )
        ca_mounts = [
            m["target"]
            for m in volume_mounts(svc)
            if (m.get("volume") or {}).get("subpath") == "ca-public"
        ]
        if not any(root == f"{t}/ca.cert.pem" for t in ca_mounts):
            found.append(f"{name}: sslrootcert {root} is not the mounted regional CA")
    return found


def test_every_database_hop_is_tls_verify_full(compose: dict[str, Any]) -> None:
    """Issue 22: "PostgreSQL connections have no TLS" — in Compose too, now. Each breakage is a
    gap the check must name."""
    assert compose_database_tls_gaps(compose) == []
    assert len(services_with(compose, "database")) == 6

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(compose)
        change(copy_["services"])
        return compose_database_tls_gaps(copy_)

    def ssl_off(s: dict[str, Any]) -> None:
        s["consent-db"]["command"] = [
            a.replace("ssl=on", "ssl=off") for a in s["consent-db"]["command"]
        ]

    def plaintext_hba(s: dict[str, Any]) -> None:
        s["node-tertiary-db"]["entrypoint"] = [
            a.replace("'hostssl ipjms ipjms all", "'host ipjms ipjms all")
            for a in s["node-tertiary-db"]["entrypoint"]
        ]

    def readable_key(s: dict[str, Any]) -> None:
        s["coordinator-db"]["entrypoint"] = [
            a.replace(
                "-m 0600 -o postgres -g postgres /run/ipjms/db-tls",
                "-m 0644 -o postgres -g postgres /run/ipjms/db-tls",
            )
            for a in s["coordinator-db"]["entrypoint"]
        ]

    def no_verify(s: dict[str, Any]) -> None:
        e = s["node-clinic-a"]["environment"]
        e["IPJMS_DB_URL"] = e["IPJMS_DB_URL"].replace("verify-full", "require")

    def trust_hba(s: dict[str, Any]) -> None:
        s["node-clinic-b-db"]["entrypoint"] = [
            a.replace("'local all ipjms scram-sha-256'", "'local all all trust'")
            for a in s["node-clinic-b-db"]["entrypoint"]
        ]

    assert "consent-db: PostgreSQL without ssl=on" in broken(ssl_off)
    assert "node-tertiary-db: pg_hba admits host connections (not TLS only)" in broken(
        plaintext_hba
    )
    assert "coordinator-db: its TLS key is not installed 0600 owned by postgres" in broken(
        readable_key
    )
    assert "node-clinic-a: IPJMS_DB_URL does not verify the database (verify-full)" in broken(
        no_verify
    )
    assert any("does not use scram-sha-256" in f for f in broken(trust_hba))


# Roles whose containers hold or read patient data (records, consents, pseudonyms, envelopes).
PATIENT_DATA_ROLES = {
    "node", "supernode", "consent", "coordinator", "database", "superlink", "pseudonym",
}  # fmt: skip


def compose_egress_gaps(compose: dict[str, Any]) -> list[str]:
    """Docker has no egress policy; the topology is the limit. A service reaches off the host only
    through a non-internal network, so a service handling patient data may join one only to
    publish the ports the operator must reach, and must name why (`ipjms.front`)."""
    found: list[str] = []
    networks = compose.get("networks") or {}
    for name, svc in compose["services"].items():
        role = (svc.get("labels") or {}).get("ipjms.role")
        if svc.get("network_mode") == "none":
            continue
        joined = svc.get("networks") or ["default"]
        open_ = [n for n in joined if not (networks.get(n) or {}).get("internal")]
        if svc.get("ports") and not open_:
            found.append(f"{name}: publishes ports but sits on internal networks only")
        if not open_ or role not in PATIENT_DATA_ROLES:
            continue
        if not svc.get("ports"):
            found.append(f"{name}: on non-internal {open_} without publishing a port")
        if not (svc.get("labels") or {}).get("ipjms.front"):
            found.append(f"{name}: on non-internal {open_} without a named reason (ipjms.front)")
    return found


def test_services_with_patient_data_have_no_route_off_the_host_unless_named(
    compose: dict[str, Any],
) -> None:
    """Issue 22: "no egress policy". Databases, the regional network, SuperLink and SuperNodes
    are `internal`; only the services with published ports join `front`, each with a reason."""
    assert compose_egress_gaps(compose) == []
    open_members = {
        n
        for n, s in compose["services"].items()
        if any(not (compose["networks"][x] or {}).get("internal") for x in s.get("networks", []))
    }
    assert open_members == {n for n, s in compose["services"].items() if s.get("ports")}
    assert open_members == {
        "coordinator",
        "consent",
        "node-tertiary",
        "node-clinic-a",
        "node-clinic-b",
    }

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(compose)
        change(copy_)
        return compose_egress_gaps(copy_)

    def supernode_on_front(c: dict[str, Any]) -> None:
        c["services"]["supernode-clinic-a"]["networks"].append("front")

    def region_open(c: dict[str, Any]) -> None:
        c["networks"]["region"] = {}

    def no_reason(c: dict[str, Any]) -> None:
        del c["services"]["node-tertiary"]["labels"]["ipjms.front"]

    def default_network(c: dict[str, Any]) -> None:
        del c["services"]["superlink"]["networks"]

    assert broken(supernode_on_front) == [
        "supernode-clinic-a: on non-internal ['front'] without publishing a port",
        "supernode-clinic-a: on non-internal ['front'] without a named reason (ipjms.front)",
    ]
    assert "superlink: on non-internal ['region'] without publishing a port" in broken(region_open)
    assert broken(no_reason) == [
        "node-tertiary: on non-internal ['front'] without a named reason (ipjms.front)"
    ]
    assert "superlink: on non-internal ['default'] without publishing a port" in broken(
        default_network
    )


# --- the pseudonymisation authority (issue 23) ----------------------------------------------------


def linkage_key_gaps(compose: dict[str, Any]) -> list[str]:
    """No service is handed a linkage key (environment, mounted PKI part or a variable naming
    one); nodes and SuperNodes get the authority's https URL instead."""
    found: list[str] = []
    authority = next(iter(services_with(compose, "pseudonym")), None)
    for name, svc in compose["services"].items():
        role = (svc.get("labels") or {}).get("ipjms.role")
        e = env(svc)
        for key, value in e.items():
            if "LINKAGE" in key.upper() or "linkage" in value:
                found.append(f"{name}: {key} names a linkage key")
        for m in volume_mounts(svc):
            where = f"{m.get('target', '')} {(m.get('volume') or {}).get('subpath', '')}"
            if "linkage" in where:
                found.append(f"{name}: mounts a linkage key ({where.strip()})")
        if role in ("node", "supernode"):
            url = urlsplit(e.get("IPJMS_NODE_PSEUDONYM_URL", ""))
            if url.scheme != "https" or url.hostname != authority:
                found.append(f"{name}: IPJMS_NODE_PSEUDONYM_URL is not https://{authority}:…")
    boot = compose["services"]["pki-bootstrap"]
    if "linkage" in str(boot.get("healthcheck")) or "linkage" in str(boot.get("environment")):
        found.append("pki-bootstrap: still makes or waits for a linkage key")
    return found


def authority_reach_gaps(compose: dict[str, Any]) -> list[str]:
    """Docker has no policy between containers on one network: whoever shares a network with
    the authority can call it. Only nodes and SuperNodes may (and each of them must); the
    authority publishes no port and has no route off the host."""
    found: list[str] = []
    services = compose["services"]
    names = list(services_with(compose, "pseudonym"))
    if len(names) != 1:
        return [f"{len(names)} pseudonymisation authorities (one expected)"]
    (authority,) = names
    svc = services[authority]
    networks = compose.get("networks") or {}
    if svc.get("ports"):
        found.append(f"{authority}: publishes a port")
    for net in svc.get("networks") or ["default"]:
        if not (networks.get(net) or {}).get("internal"):
            found.append(f"{authority}: on non-internal network {net}")
        for other, o in services.items():
            role = (o.get("labels") or {}).get("ipjms.role")
            if other == authority or net not in (o.get("networks") or ["default"]):
                continue
            own_db = role == "database" and o["labels"].get("ipjms.owner") == authority
            if role not in ("node", "supernode") and not own_db:
                found.append(f"{other} ({role}) reaches the authority on {net}")
    for other, o in services.items():
        is_client = (o.get("labels") or {}).get("ipjms.role") in ("node", "supernode")
        if is_client and not set(o.get("networks") or []) & set(svc.get("networks") or []):
            found.append(f"{other}: cannot reach the authority (no shared network)")
    return found


def test_compose_runs_the_pseudonymisation_authority_and_hands_out_no_linkage_key(
    compose: dict[str, Any],
) -> None:
    """Issue 23: Compose ran no authority and gave every node and SuperNode the shared
    `linkage.key` (pki-bootstrap made it). Now the authority runs as its own service — its own
    certificate through pki-bootstrap's request flow, its own database and data volume, the
    production budget — and no one holds a linkage key."""
    from trust.oprf_service import DEFAULT_BUDGET_BURST, DEFAULT_BUDGET_PER_HOUR

    services = compose["services"]
    ((name, authority),) = services_with(compose, "pseudonym").items()
    e = env(authority)
    boot = env(services["pki-bootstrap"])
    org = authority["labels"]["ipjms.org"]
    # its TLS certificate: requested, signed and accepted by pki-bootstrap for its host name
    assert f"{org}={name}" in boot["IPJMS_PKI_ORGS"].split()
    assert e["IPJMS_HTTP_TLS"] == "1" and e["IPJMS_PUBLIC_URL"] == f"https://{name}:8080"
    subpaths = {(m.get("volume") or {}).get("subpath") for m in volume_mounts(authority)}
    assert f"orgs/{org}" in subpaths
    # its own database (TLS: test_every_database_hop_is_tls_verify_full) and its own volume
    db = urlsplit(e["IPJMS_DB_URL"]).hostname
    assert services[db]["labels"] == {"ipjms.role": "database", "ipjms.owner": name}
    data = next(m["source"] for m in volume_mounts(authority) if m["target"] == "/data")
    # the production budget of trust/oprf_service.py, not the demo's bulk-load one
    assert float(e["IPJMS_PSEUDONYM_BUDGET_PER_HOUR"]) == DEFAULT_BUDGET_PER_HOUR
    assert float(e["IPJMS_PSEUDONYM_BUDGET_BURST"]) == DEFAULT_BUDGET_BURST
    node_orgs = {s["labels"]["ipjms.org"] for s in services_with(compose, "node").values()}
    assert set(e["IPJMS_PSEUDONYM_ALLOW"].split()) == node_orgs
    # its key material is its own: its data volume and its credentials are mounted by no other
    for other, svc in services.items():
        if other == name:
            continue
        for m in volume_mounts(svc):
            assert m["source"] != data, f"{other} mounts the authority's data volume"
            subpath = (m.get("volume") or {}).get("subpath", "")
            assert org not in subpath, f"{other} mounts {subpath}"
    assert linkage_key_gaps(compose) == []

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(compose)
        change(copy_["services"])
        return linkage_key_gaps(copy_)

    def linkage_env(s: dict[str, Any]) -> None:
        s["node-tertiary"]["environment"]["IPJMS_NODE_LINKAGE_KEY_PATH"] = "/run/ipjms/l/k"

    def linkage_mount(s: dict[str, Any]) -> None:
        s["supernode-clinic-a"]["volumes"].append(
            {"type": "volume", "source": "pki", "target": "/run/ipjms/linkage",
             "read_only": True, "volume": {"subpath": "linkage"}}
        )  # fmt: skip

    def plain_url(s: dict[str, Any]) -> None:
        s["node-clinic-b"]["environment"]["IPJMS_NODE_PSEUDONYM_URL"] = "http://pseudonym:8080"

    assert broken(linkage_env) == ["node-tertiary: IPJMS_NODE_LINKAGE_KEY_PATH names a linkage key"]
    assert broken(linkage_mount) == [
        "supernode-clinic-a: mounts a linkage key (/run/ipjms/linkage linkage)"
    ]
    assert broken(plain_url) == [
        "node-clinic-b: IPJMS_NODE_PSEUDONYM_URL is not https://pseudonym:…"
    ]


def test_compose_only_nodes_and_supernodes_reach_the_authority(compose: dict[str, Any]) -> None:
    """The coordinator and the registry hold every pseudonym: with OPRF access they could test
    guessed identifiers. The authority's network is joined by nodes and SuperNodes alone."""
    assert authority_reach_gaps(compose) == []

    def broken(change) -> list[str]:  # type: ignore[no-untyped-def]
        copy_ = copy.deepcopy(compose)
        change(copy_)
        return authority_reach_gaps(copy_)

    def coordinator_joins(c: dict[str, Any]) -> None:
        c["services"]["coordinator"]["networks"].append("pseudonym")

    def on_region(c: dict[str, Any]) -> None:
        c["services"]["pseudonym"]["networks"].append("region")

    def node_left_out(c: dict[str, Any]) -> None:
        c["services"]["node-clinic-a"]["networks"].remove("pseudonym")

    assert broken(coordinator_joins) == [
        "coordinator (coordinator) reaches the authority on pseudonym"
    ]
    found = broken(on_region)
    assert "consent (consent) reaches the authority on region" in found
    assert "superlink (superlink) reaches the authority on region" in found
    assert broken(node_left_out) == [
        "node-clinic-a: cannot reach the authority (no shared network)"
    ]
