"""Must-show 4 of issue 6 (and of issue 22, with encrypted dumps): a backup taken with the
documented procedure (deploy/README.md, "Backups and restore") restores into a fresh database and
the node serves the same records.

PostgreSQL: ``pg_dump -Fc`` of the node's database while the node is serving, piped straight into
``ipjms backup seal`` (encrypted to the organisation's encryption certificate: no plaintext dump
is ever written), the data dir sealed the same way; restore opens both with the organisation's
encryption key, ``createdb`` + ``pg_restore --no-owner --exit-on-error`` into a NEW database,
``ipjms node serve --db NEW``. SQLite: ``sqlite3 node.db ".backup FILE"`` while the node is
serving, the file copied into a restored data dir. Both compare, over the FHIR API, the per-type
totals, resources, a search page and Patient/$everything byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.launcher import Service, ipjms_command, start_service

PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")
TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
         "Immunization", "DiagnosticReport", "Organization", "Practitioner")  # fmt: skip


def _ipjms(*args: str) -> str:
    done = subprocess.run(
        ipjms_command(*args), capture_output=True, text=True, timeout=600,
        env={**os.environ, "IPJMS_ADMIN_PASSWORD": "backup test admin pw"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    return done.stdout


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd[0]}: {done.stderr[-1500:]}"


def _sh(script: str, **env: str) -> None:
    """One documented shell pipeline (``ipjms`` run with this interpreter)."""
    ipjms = " ".join(ipjms_command())
    done = subprocess.run(
        ["bash", "-ec", f"set -o pipefail\n{script}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "IPJMS": ipjms, **env},
    )  # fmt: skip
    assert done.returncode == 0, f"{script}: {done.stderr[-1500:]}"


def _serve(data_dir: Path, port: int, log_dir: Path, *db: str) -> Service:
    """``node serve`` on ``port`` (0: the OS picks; the port it got is in ``extra["ports"]``).
    The restored node is served on the live node's port: the snapshots' URLs must match."""
    return start_service(
        f"node-{data_dir.name}",
        ["node", "serve", "--data-dir", str(data_dir), "--port", str(port), *db],
        base_url="http://127.0.0.1:{http}",
        log_dir=log_dir,
        ports_dir=data_dir,
    )


def _port(node: Service) -> int:
    return int(node.extra["ports"]["http"])


def _snapshot(url: str, data_dir: Path) -> dict[str, bytes]:
    """What the node serves: totals per type, a sorted search page, the first patients and
    their $everything — raw response bytes."""
    token = _ipjms("node", "token", "--data-dir", str(data_dir)).strip()
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, bytes] = {}
    with httpx.Client(base_url=f"{url}/fhir", headers=headers, timeout=60) as http:

        def get(path: str, **params: str) -> bytes:
            r = http.get(path, params=params)
            assert r.status_code == 200, r.text[:500]
            return r.content

        for rtype in TYPES:
            out[f"total {rtype}"] = get(f"/{rtype}", _count="0")
        out["observations page"] = get("/Observation", _count="100", _sort="_id")
        patients = httpx.Response(200, content=get("/Patient", _count="3", _sort="_id")).json()
        for entry in patients["entry"]:
            pid = entry["resource"]["id"]
            out[f"Patient/{pid}"] = get(f"/Patient/{pid}")
            out[f"Patient/{pid}/$everything"] = get(f"/Patient/{pid}/$everything", _count="1000")
    return out


def _check_same(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert before[key] == after[key], f"{key} differs after restore"
    # the comparison is about real data, not empty answers
    assert b'"total":0' not in before["total Patient"].replace(b" ", b"")
    everything = [k for k in before if k.endswith("$everything")]
    assert len(everything) == 3 and all(len(before[k]) > 2000 for k in everything)


@pytest.fixture
def pg_databases() -> Iterator[tuple[str, str]]:
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    import psycopg

    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    base = admin.rsplit("/", 1)[0]
    tag = uuid.uuid4().hex[:10]
    live, restored = f"ipjms_bk_live_{tag}", f"ipjms_bk_restored_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{live}"')
    try:
        yield f"{base}/{live}", f"{base}/{restored}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in (live, restored):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _node_with_records(data_dir: Path, export_dir: Path, *db: str) -> None:
    _ipjms("node", "init", "--org", "org-backup", "--name", "Backup test", "--level",
           "tertiary", "--data-dir", str(data_dir), *db)  # fmt: skip
    _ipjms("node", "ingest", "--data-dir", str(data_dir), str(export_dir))


@pytest.mark.postgres
def test_pg_dump_restores_into_a_fresh_database(
    tmp_path: Path, synthea_shaped_dir: Path, pg_databases: tuple[str, str]
) -> None:
    live_url, restored_url = pg_databases
    from trust.pki import init_ca, issue_org

    init_ca(tmp_path / "ca")  # the organisation's encryption key seals its backups
    issue_org(tmp_path / "ca", "org-backup", host="127.0.0.1")
    org = tmp_path / "ca" / "orgs" / "org-backup"
    live_dir = tmp_path / "live"
    _node_with_records(live_dir, synthea_shaped_dir, "--db", live_url)
    node = _serve(live_dir, 0, tmp_path / "logs")
    port = _port(node)
    backups = tmp_path / "backups"
    backups.mkdir()
    sealing = {"CERT": str(org / "encryption.cert.pem"), "URL": live_url, "OUT": str(backups)}
    try:
        before = _snapshot(node.base_url, live_dir)
        # the documented procedure, taken while the node serves: nothing in the clear on disk
        _sh('pg_dump -Fc -d "$URL" | $IPJMS backup seal --to "$CERT" - "$OUT/node.dump.sealed"',
            **sealing)  # fmt: skip
        _sh(f'tar -C "{tmp_path}" -cf - live | $IPJMS backup seal --to "$CERT" - '
            '"$OUT/node-data.tar.sealed"', **sealing)  # fmt: skip
    finally:
        node.stop()
    sealed = (backups / "node.dump.sealed").read_bytes()
    assert not sealed.startswith(b"PGDMP") and len(sealed) > 10_000
    # a changed backup is refused whole (nothing restored from it)
    damaged = backups / "damaged.sealed"
    damaged.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    refused = subprocess.run(
        ipjms_command("backup", "open", "--key", str(org / "encryption.key.pem"),
                      str(damaged), str(backups / "damaged.dump")),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and not (backups / "damaged.dump").exists()
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://")  # type: ignore[union-attr]
    _run("createdb", f"--maintenance-db={admin}", restored_url.rsplit("/", 1)[1])
    opening = {"KEY": str(org / "encryption.key.pem"), "URL": restored_url, "IN": str(backups)}
    _sh('$IPJMS backup open --key "$KEY" "$IN/node.dump.sealed" - '
        '| pg_restore --no-owner --exit-on-error -d "$URL"', **opening)  # fmt: skip
    restore_root = tmp_path / "restore"
    restore_root.mkdir()
    _sh('$IPJMS backup open --key "$KEY" "$IN/node-data.tar.sealed" - | tar -C "$TO" -xf -',
        **opening, TO=str(restore_root))  # fmt: skip
    restored_dir = restore_root / "live"
    node = _serve(restored_dir, port, tmp_path / "logs", "--db", restored_url)
    try:
        after = _snapshot(node.base_url, restored_dir)
    finally:
        node.stop()
    _check_same(before, after)


def test_sqlite_backup_restores(tmp_path: Path, synthea_shaped_dir: Path) -> None:
    live_dir = tmp_path / "live"
    _node_with_records(live_dir, synthea_shaped_dir)
    node = _serve(live_dir, 0, tmp_path / "logs")
    port = _port(node)
    backup = tmp_path / "backups" / "node.db"
    backup.parent.mkdir()
    try:
        before = _snapshot(node.base_url, live_dir)
        _run("sqlite3", str(live_dir / "node.db"), f".backup '{backup}'")  # online, WAL-safe
        shutil.copytree(
            live_dir, tmp_path / "backups" / "data", ignore=shutil.ignore_patterns("node.db*")
        )
    finally:
        node.stop()
    restored_dir = tmp_path / "restored"
    shutil.copytree(tmp_path / "backups" / "data", restored_dir)
    shutil.copy(backup, restored_dir / "node.db")
    node = _serve(restored_dir, port, tmp_path / "logs")
    try:
        after = _snapshot(node.base_url, restored_dir)
    finally:
        node.stop()
    _check_same(before, after)
