"""The SuperNode's (and ``ipjms fl score``'s) pseudonym store (issue 23 leftover): what the
pseudonymisation authority answered is kept in the process's own state folder (``pseudonyms.db``,
0600, ``trust/pseudonym_store.py`` — the implementation the node's web app uses too), so a
restarted SuperNode asks nothing again for the patients it knows; a key re-made under the same
version number is never answered from it.

The authority is the real one (``ipjms pseudonym serve`` as a process, a real PKI); what it was
asked is counted from its own audit ledger, so a count is what it evaluated, not what the
SuperNode says it asked. The pseudonymiser is built as the ClientApp builds it
(``federated.pseudonyms.from_node_config`` over the SuperNode's node config).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federated.pseudonyms import from_node_config, node_pseudonymiser
from trust.pki import load_org
from trust.pseudonym import oprf_input
from trust.pseudonym_store import FILE_FORMAT, open_file_store
from trust.pseudonymiser import OprfPseudonymiser, input_digest, store_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trust"))

from authority_process import Authority, make_pki, running_authority  # noqa: E402

ORG = "hosp-a"
NATIONAL = "https://ipjms.example.org/fhir/sid/national-id"
PATIENTS = [(NATIONAL, f"FL-1951-{i:04d}") for i in range(10)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"), ORG)


@pytest.fixture
def authority(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Authority]:
    with running_authority(tmp_path, pki["ca"], ORG) as auth:
        yield auth


def _supernode(authority: Authority, pki: dict[str, Path], data_dir: Path) -> OprfPseudonymiser:
    """What a SuperNode's ClientApp builds at start: its node config, a fresh memory."""
    config = {"pseudonym-url": authority.url, "data-dir": str(data_dir), "org-id": ORG}
    made = from_node_config(config, load_org(pki[ORG]))
    assert isinstance(made, OprfPseudonymiser) and made.store is not None
    return made


def test_a_restarted_supernode_asks_the_authority_nothing_for_patients_it_knows(
    authority: Authority, pki: dict[str, Path], tmp_path: Path
) -> None:
    data_dir = tmp_path / "supernode-hosp-a"
    first = _supernode(authority, pki, data_dir)
    regional = first.regional(PATIENTS)
    routing = [first.routing(p, ORG, "clinic-b") for p in regional[:3]]
    asked = authority.evaluated()
    assert asked == len(PATIENTS) + 3  # each once

    store = data_dir / "pseudonyms.db"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    for side in data_dir.glob("pseudonyms.db-*"):  # SQLite's -wal and -shm: the same mode
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
    with sqlite3.connect(store) as conn:  # keyed digests of the inputs, never an identifier
        stored = " ".join(str(v) for row in conn.execute("SELECT * FROM pseudonyms") for v in row)
    inputs = [oprf_input(*p) for p in PATIENTS]
    assert all(value not in stored for _, value in PATIENTS)
    assert all(x.decode() not in stored and x.hex() not in stored for x in inputs)
    assert all(hashlib.sha256(x).hexdigest() not in stored for x in inputs)  # no plain hash
    key = store_key(load_org(pki[ORG]))
    assert key.hex() not in stored
    assert input_digest(key, inputs[0]).hex() in stored

    again = _supernode(authority, pki, data_dir)  # the SuperNode restarted: same folder
    assert again.regional(list(reversed(PATIENTS))) == list(reversed(regional))
    assert [again.routing(p, "clinic-b", ORG) for p in regional[:3]] == routing
    assert authority.evaluated() == asked  # nothing asked again
    new = again.regional([(NATIONAL, "FL-1951-0999")])
    assert new[0] not in regional and authority.evaluated() == asked + 1  # a new one: once

    # ``ipjms fl score --data-dir <the SuperNode's folder>`` shares the same store
    scorer = node_pseudonymiser(load_org(pki[ORG]), pseudonym_url=authority.url, state_dir=data_dir)
    assert scorer.regional(PATIENTS[:5]) == regional[:5]
    assert authority.evaluated() == asked + 1
    # without a folder: memory only, as before (each process asks again)
    memory = node_pseudonymiser(load_org(pki[ORG]), pseudonym_url=authority.url)
    assert isinstance(memory, OprfPseudonymiser) and memory.store is None
    assert memory.regional(PATIENTS[:2]) == regional[:2]
    assert authority.evaluated() == asked + 3


def test_a_key_re_made_under_the_same_number_is_not_answered_from_the_supernode_store(
    authority: Authority, pki: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The authority loses its volume (key folder and database) and starts again with a new
    key, again called v1 (another fingerprint): a restarted SuperNode does not answer from what
    it kept under the old v1 — it asks afresh, gets what a SuperNode that never knew the old key
    gets, and warns (naming no patient)."""
    data_dir = tmp_path / "supernode-hosp-a"
    ids = PATIENTS[:4]
    old = _supernode(authority, pki, data_dir).regional(ids)
    old_routing = _supernode(authority, pki, data_dir).routing(old[0], ORG, "clinic-b")
    authority.stop()
    shutil.rmtree(authority.root / "svc")  # the authority's volume is lost
    authority.start()  # a new key, again v1
    assert authority.evaluated() == 0

    caplog.set_level(logging.WARNING, logger="ipjms.pseudonymiser")
    restarted = _supernode(authority, pki, data_dir)
    new = restarted.regional(ids)
    assert all(p.startswith("v1.") for p in new) and set(new).isdisjoint(old)
    assert authority.evaluated() == len(ids)  # asked afresh: nothing answered from the store
    new_routing = restarted.routing(new[0], ORG, "clinic-b")
    assert new_routing != old_routing and authority.evaluated() == len(ids) + 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("is not the key this node's pseudonyms of v1 were made under" in w for w in warnings)
    assert not any(value in w for w in warnings for _, value in ids)
    assert not any(p in w for w in warnings for p in old + new)

    elsewhere = node_pseudonymiser(load_org(pki[ORG]), pseudonym_url=authority.url)
    assert elsewhere.regional(ids) == new  # a SuperNode that never knew the old key agrees
    asked = authority.evaluated()
    assert _supernode(authority, pki, data_dir).regional(ids) == new  # the new key's entries
    assert authority.evaluated() == asked  # now answer a further restart


def test_a_supernode_file_of_plain_sha256_digests_or_another_key_is_emptied_when_opened(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    """A ``pseudonyms.db`` written before the digests were keyed (no format row; plain SHA-256
    rows, brute-forceable offline) has its rows dropped when the SuperNode opens it; so has a
    file kept under another store key (the organisation's signing key re-issued). A file of the
    current format and key keeps its rows across opens."""
    data_dir = tmp_path / "supernode-hosp-a"
    data_dir.mkdir()
    x = oprf_input(*PATIENTS[0])
    with sqlite3.connect(data_dir / "pseudonyms.db") as conn:  # the file as written before
        conn.execute(
            "CREATE TABLE pseudonyms (kind VARCHAR(16), key_version INTEGER, "
            "key_fingerprint VARCHAR(64), input_digest VARCHAR(64), pseudonym VARCHAR(128) "
            "NOT NULL, PRIMARY KEY (kind, key_version, key_fingerprint, input_digest))"
        )
        conn.execute(
            "INSERT INTO pseudonyms VALUES ('regional', 1, ?, ?, 'v1.old')",
            ("ab" * 32, hashlib.sha256(x).hexdigest()),
        )

    def rows() -> list[tuple[Any, ...]]:
        with sqlite3.connect(data_dir / "pseudonyms.db") as conn:
            return conn.execute("SELECT * FROM pseudonyms").fetchall()

    key = store_key(load_org(pki[ORG]))
    store = open_file_store(data_dir, key)
    try:
        assert rows() == []  # the plain-hash row is gone
        with sqlite3.connect(data_dir / "pseudonyms.db") as conn:
            assert conn.execute("SELECT format FROM store_format").fetchall() == [(FILE_FORMAT,)]
        store.save("regional", (1, "ab" * 32), {store.digest(x): "v1.new"})
    finally:
        store.close()
    again = open_file_store(data_dir, key)  # a restart with the same credentials: kept
    try:
        assert again.load("regional", (1, "ab" * 32), [again.digest(x)]) == {
            again.digest(x): "v1.new"
        }
    finally:
        again.close()
    other = open_file_store(data_dir, b"\x01" * 32)  # another store key: nothing matches
    try:
        assert rows() == []
    finally:
        other.close()
