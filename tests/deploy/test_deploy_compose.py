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
    for role in ("coordinator", "consent", "superlink", "pki-bootstrap"):
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
            elif kind == "linkage":  # nodes and their SuperNodes; never coordinator/consent
                assert svc["labels"]["ipjms.role"] in ("node", "supernode"), name
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
        if role in ("node", "consent", "coordinator") and env.get("IPJMS_HTTP_TLS") != "1":
            found.append(f"{name}: serves plaintext HTTP (IPJMS_HTTP_TLS is not 1)")
        trusts_ca = env.get("SSL_CERT_FILE") == "/run/ipjms/ca/ca.cert.pem"
        if role in ("node", "consent", "coordinator", "supernode") and not trusts_ca:
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
    assert len(services_with(compose, "database")) == 5

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
PATIENT_DATA_ROLES = {"node", "supernode", "consent", "coordinator", "database", "superlink"}


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
