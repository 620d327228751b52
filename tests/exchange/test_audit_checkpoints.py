"""Issue 13 item 8 over a real coordinator process: its routing ledger is anchored by signed
checkpoints in a file outside its database, countersigned by another organisation, and
``ipjms audit verify --checkpoints`` names a truncated or rewritten chain — both of which the
hash chain alone verifies as "ok" (the finding, shown here too)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from exchange_net import Coordinator, wait_for

from deploy.launcher import ipjms_command
from node.exchange.client import ExchangeClient
from trust.envelopes import EnvelopeHeader, seal_to
from trust.hashchain import entry_hash
from trust.ledger_checkpoint import read_checkpoints

pytestmark = pytest.mark.slow
LOG = "coordinator/coordinator"


def _ipjms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ipjms_command(*args), capture_output=True, text=True, timeout=120)


def _verify(db: Path, *checkpoint_files: Path, ca_dir: Path) -> subprocess.CompletedProcess[str]:
    args = ["audit", "verify", "--db", f"sqlite:///{db}"]
    for path in checkpoint_files:
        args += ["--checkpoints", str(path)]
    if checkpoint_files:
        args += ["--ca-dir", str(ca_dir), "--operator", "coordinator"]
    return _ipjms(*args)


def _refused_sends(coordinator: Coordinator, pki, count: int) -> None:  # type: ignore[no-untyped-def]
    """Data envelopes to a coordinator with no consent registry: each is refused and audited."""
    with ExchangeClient(coordinator.address, pki.creds["hosp-a"]) as client:
        for i in range(count):
            header = EnvelopeHeader.new(
                kind="referral", sender="hosp-a", recipient="clinic-b",
                patient_pseudonym=f"{i:02d}" * 32,
            )  # fmt: skip
            sealed = seal_to(
                header, b"{}", sender=pki.creds["hosp-a"],
                recipient_encryption_cert_pem=pki.creds["clinic-b"].encryption_cert_pem,
            )  # fmt: skip
            with pytest.raises(grpc.RpcError) as refused:
                client.send(sealed)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _rows(db: Path) -> list[tuple[int, str, str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select seq, prev_hash, recorded_at, event, patient_pseudonym from audit_ledger "
            "order by seq"
        ).fetchall()


def _truncate(db: Path) -> None:
    """Delete the newest entry and move the head back (the operator can write the database)."""
    with sqlite3.connect(db) as conn:
        last = conn.execute("select max(seq) from audit_ledger").fetchone()[0]
        conn.execute("delete from audit_ledger where seq = ?", (last,))
        prev = conn.execute("select hash from audit_ledger where seq = ?", (last - 1,)).fetchone()
        conn.execute("update audit_ledger_head set seq = ?, hash = ?", (last - 1, prev[0]))


def _rewrite(db: Path, seq: int) -> None:
    """Edit entry ``seq`` and re-hash it and everything after it, head included."""
    rows = _rows(db)
    prev = next(r for r in rows if r[0] == seq)[1]
    with sqlite3.connect(db) as conn:
        for number, _old_prev, recorded_at, event_text, pseudo in rows:
            if number < seq:
                continue
            event = json.loads(event_text)
            if number == seq:
                event["outcomeDesc"] = "nothing happened here"
            digest = entry_hash(number, prev, recorded_at, event, pseudo)
            conn.execute(
                "update audit_ledger set prev_hash = ?, hash = ?, event = ? where seq = ?",
                (prev, digest, json.dumps(event, sort_keys=True, separators=(",", ":")), number),
            )
            prev = digest
        conn.execute("update audit_ledger_head set hash = ?", (prev,))


def test_checkpoints_name_truncation_and_rewrite_that_the_chain_alone_misses(
    start_coordinator: Callable[..., Coordinator],
    pki,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    coordinator = start_coordinator("--checkpoint-interval", "0.2")
    _refused_sends(coordinator, pki, 5)
    checkpoints = coordinator.data_dir / "audit-checkpoints.jsonl"
    wait_for(
        lambda: any(cp.seq >= 5 for cp in read_checkpoints(checkpoints)),
        what="a signed checkpoint of the 5 refusals",
    )
    coordinator.service.stop()
    db = coordinator.data_dir / "coordinator.db"
    assert all(cp.signer == "coordinator" for cp in read_checkpoints(checkpoints))

    ok = _verify(db, checkpoints, ca_dir=pki.ca_dir)
    assert ok.returncode == 0 and "signed checkpoint" in ok.stdout, ok.stdout + ok.stderr

    # Another organisation countersigns, keeping its own copy in its own store.
    witness_copy = tmp_path / "authority-store" / "witnessed.jsonl"
    r = _ipjms("audit", "cosign", "--checkpoints", str(checkpoints),
               "--org-dir", str(pki.org_dirs["authority"]), "--ca-dir", str(pki.ca_dir),
               "--witness-file", str(witness_copy))  # fmt: skip
    assert r.returncode == 0 and "countersigned" in r.stdout, r.stdout + r.stderr

    # 1. truncation: the chain alone says ok; the checkpoints name it
    truncated = tmp_path / "truncated.db"
    shutil.copy(db, truncated)
    _truncate(truncated)
    assert _verify(truncated, ca_dir=pki.ca_dir).returncode == 0  # the finding
    r = _verify(truncated, checkpoints, ca_dir=pki.ca_dir)
    assert r.returncode == 1 and "truncated" in r.stdout, r.stdout + r.stderr

    # 2. rewrite of entry 2 and re-hash of everything after it
    rewritten = tmp_path / "rewritten.db"
    shutil.copy(db, rewritten)
    _rewrite(rewritten, 2)
    assert _verify(rewritten, ca_dir=pki.ca_dir).returncode == 0  # the finding
    r = _verify(rewritten, checkpoints, ca_dir=pki.ca_dir)
    assert r.returncode == 1 and "rewritten" in r.stdout, r.stdout + r.stderr

    # 3. the operator also rewrites its own checkpoint file and re-signs with its own key: its
    #    file alone now agrees, the witness's copy does not, and the witness refuses the fork.
    forged = tmp_path / "operator-forged.jsonl"
    r = _ipjms("audit", "checkpoint", "--org-dir", str(pki.org_dirs["coordinator"]),
               "--out", str(forged), "--log", LOG, "--db", f"sqlite:///{rewritten}")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert _verify(rewritten, forged, ca_dir=pki.ca_dir).returncode == 0
    r = _verify(rewritten, forged, witness_copy, ca_dir=pki.ca_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "equivocation" in r.stdout or "rewritten" in r.stdout, r.stdout
    r = _ipjms("audit", "cosign", "--checkpoints", str(forged),
               "--org-dir", str(pki.org_dirs["authority"]), "--ca-dir", str(pki.ca_dir),
               "--witness-file", str(witness_copy))  # fmt: skip
    assert r.returncode == 1 and "fork" in r.stdout, r.stdout + r.stderr
    # only countersigned checkpoints trusted: the forged one has none
    r = _ipjms("audit", "verify", "--db", f"sqlite:///{rewritten}", "--checkpoints", str(forged),
               "--ca-dir", str(pki.ca_dir), "--require-witness")  # fmt: skip
    assert r.returncode == 1 and "countersigned" in r.stdout, r.stdout + r.stderr
