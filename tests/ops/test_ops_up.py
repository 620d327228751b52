"""``ipjms up``: network.toml validation, and the whole demo story on PostgreSQL (must-show 2)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from deploy.demo.story import RUN_ORDER
from deploy.launcher import ipjms_command
from deploy.up_config import ConfigError, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "deploy" / "network.example.toml"
PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")

GOOD = {
    "postgres": {"server": "postgresql://ipjms@db.example:5432/postgres"},
    "node": [
        {"org": "org-a", "name": "A", "level": "tertiary"},
        {"org": "org-b", "name": "B", "level": "community"},
        {"org": "org-c", "name": "C", "level": "community", "profile": "tertiary"},
    ],
}


def _with(path: tuple[str | int, ...], value: object) -> dict[str, object]:
    import copy

    doc = copy.deepcopy(GOOD)
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    if value is None:
        del target[path[-1]]  # type: ignore[attr-defined]
    else:
        target[path[-1]] = value  # type: ignore[index]
    return doc


def test_example_config_parses_and_names_one_database_per_service() -> None:
    cfg = load_config(EXAMPLE)
    assert [n.org for n in cfg.nodes] == ["org-tertiary", "org-clinic-b", "org-clinic-c"]
    cfg.check_story()
    urls = {s: cfg.database_url(s) for s in cfg.services()}
    assert urls["consent"] == "postgresql://ipjms@127.0.0.1:5432/ipjms_consent"
    assert urls["node-org-clinic-b"].endswith("/ipjms_node_org_clinic_b")
    assert len(set(urls.values())) == len(urls) == 5


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("postgres",), None, "postgres"),
        (("postgres", "server"), None, "postgres.server"),
        (("postgres", "server"), "mysql://x@h/db", "postgres.server"),
        (("postgres", "server"), "postgresql://u:secret@h/db", "postgres.server"),
        (("postgres", "prefix"), "Bad-Prefix", "postgres.prefix"),
        (("postgres", "password_file"), "/nonexistent/pw", "postgres.password_file"),
        (("postgres", "sever"), "typo", "postgres.sever"),
        (("node",), [], "node"),
        (("node", 1, "level"), "hospital", "node[1].level"),
        (("node", 1, "org"), "Org A!", "node[1].org"),
        (("node", 2, "org"), "org-a", "node[2].org"),
        (("node", 0, "name"), None, "node[0].name"),
        (("node", 0, "profile"), "county", "node[0].profile"),
        (("node", 0, "colour"), "blue", "node[0].colour"),
        (("region",), {}, "region"),
        (("tls",), {"enabled": True}, "postgres.server"),  # a TLS network needs verify-full
        (("tls",), {"enabled": "yes"}, "tls.enabled"),
        (("tls",), {"enable": True}, "tls.enable"),
        (("postgres", "managed"), "yes", "postgres.managed"),
        (("postgres", "managed"), True, "postgres.server"),  # managed instead of a server
    ],
)
def test_bad_config_names_the_key(path: tuple[str | int, ...], value: object, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(path, value))
    assert str(info.value).startswith(named), str(info.value)


def test_story_needs_a_tertiary_and_two_community_nodes() -> None:
    cfg = parse_config(_with(("node", 2, "level"), "county"))
    with pytest.raises(ConfigError, match="^node: --run-story"):
        cfg.check_story()


def test_cli_reports_bad_config_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "network.toml"
    bad.write_text('[postgres]\nserver = "postgresql://u@h/db"\n[[node]]\norg = "x"\n')
    done = subprocess.run(
        ipjms_command("up", "--config", str(bad), "--workdir", str(tmp_path / "w")),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2
    assert "node[0].name: missing" in done.stderr
    assert not (tmp_path / "w").exists()


STORY_STEPS = (
    "Seed synthetic patients at every node",
    "Ingest a generated Synthea-shaped export into the tertiary hospital",
    "A patient enrols in the consent registry through the hospital",
    "Signed decisions: inside the consent permitted, outside refused",
    "The consent registry's audit ledger verifies",
    "refers the discharged patient down to",
    "pulls the patient's history",
    "The coordinator holds none of what it carried",
    "enrols the referred heart-failure patient",
    "The patient signs in once, for the clinic and the registry",
    "The patient's scale uploads three days of weights rising 2.5 kg",
    "The follow-up moves earlier; the doctor records a mitigation",
    "A hypertensive patient's 186/112 is urgent; 124/78 raises none",
    "The web applications: each node's doctor and patient pages",
)
FEDERATED_STEPS = (
    "Research cohorts: HRESCH/HQUALIMP consents, one SuperNode per node",
    "Federated training",
    "Scoring: every node's patients scored",  # then: flags high-risk / NOT FOR CLINICAL USE
    "Regional quality indicators",
)


def _drop(prefix: str) -> None:
    import psycopg

    assert PG_URL
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
            )
        ]
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_up_creates_each_service_database_once_on_a_given_server() -> None:
    """The external-server path (``[postgres] server``): one database per service, created when
    missing and reported as existing the next time."""
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    from deploy.up import ensure_databases

    prefix = f"ipjms_upx_{uuid.uuid4().hex[:8]}_"
    cfg = parse_config({**_with(("postgres", "server"), PG_URL),
                        "postgres": {"server": PG_URL, "prefix": prefix}})  # fmt: skip
    try:
        first = ensure_databases(cfg)
        assert all(created for _url, created in first.values()) and len(first) == 5
        again = ensure_databases(cfg)
        assert not any(created for _url, created in again.values())
        assert again["node-org-b"][0].endswith(f"/{prefix}node_org_b")
    finally:
        _drop(prefix)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole story, federated training included (2 rounds)
def test_up_runs_the_demo_story_on_postgresql(tmp_path: Path) -> None:
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    prefix = f"ipjms_up_{uuid.uuid4().hex[:8]}_"
    config = tmp_path / "network.toml"
    config.write_text(
        EXAMPLE.read_text()
        .replace("postgresql://ipjms@127.0.0.1:5432/postgres", PG_URL)
        .replace('prefix = "ipjms_"', f'prefix = "{prefix}"')
    )
    try:
        done = subprocess.run(
            ipjms_command(
                *("up", "--config", str(config), "--workdir", str(tmp_path / "net")),
                *("--run-story", "--fl-rounds", "2"),  # every chapter; rounds: tests/federated
            ),
            capture_output=True,
            text=True,
            timeout=1700,  # ~5 min alone; far longer while the suite shares two cores
            env={**os.environ, "COLUMNS": "200"},
        )
        out = done.stdout
        failed = "\n".join(line for line in out.splitlines() if "✘" in line)  # why, first
        assert done.returncode == 0, failed + out[-3000:] + done.stderr[-2000:]
        for service in ("consent", "coordinator", "node_org_tertiary", "node_org_clinic_c"):
            assert f"database {prefix}{service} (created)" in out
        lines = out.splitlines()
        steps = STORY_STEPS + (FEDERATED_STEPS if "federated" in RUN_ORDER else ())
        for step in steps:
            assert any(line.startswith("  ✔") and step in line for line in lines), step
        assert "✘" not in out
        assert "Federated training: 2 rounds" in out and "round 2/2" in out
        started = [line for line in lines if line.startswith("▶ ")]
        assert len(started) == sum(line.startswith("  ✔") for line in lines) >= len(steps)
        # every node really ran on its PostgreSQL database, not on a SQLite file
        for org in ("org-tertiary", "org-clinic-b", "org-clinic-c"):
            node_dir = tmp_path / "net" / f"node-{org}"
            assert f"/{prefix}node_{org.replace('-', '_')}" in (node_dir / "node.toml").read_text()
            assert not (node_dir / "node.db").exists()
        assert not (tmp_path / "net" / "consent" / "consent.db").exists()
        assert not (tmp_path / "net" / "coordinator" / "coordinator.db").exists()
    finally:
        _drop(prefix)
