"""The node's persistent pseudonym store (issue 23 leftover): a restarted node asks the
pseudonymisation authority nothing for the patients it already knows; a new key version is asked
fresh; a key re-made under the same number (the authority's key folder lost) is asked fresh and
warned about; a failed write leaves nothing half-done.

The authority is the real one (``ipjms pseudonym serve`` as a process, a real PKI); what it was
asked is counted from its own audit ledger (the elements of every granted call), so a count is
what the authority evaluated, not what the node says it asked. The store is the node's own
database (SQLite and PostgreSQL, migrated by the node's composition root).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from authority_process import Authority, make_pki, running_authority
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from node.app import build_services, migrate_schemas
from node.identity import NATIONAL_ID_SYSTEM
from node.pseudonym_store import SqlPseudonymStore
from node.pseudonym_store.feature import MIGRATIONS_DIR
from node.pseudonym_store.tables import pseudonyms
from node.settings import load_settings
from servicekit.storage import make_engine, upgrade_schema
from trust.oprf_client import OprfPseudonyms
from trust.pki import load_org
from trust.pseudonym import oprf_input
from trust.pseudonym_keys import rotate
from trust.pseudonymiser import OprfPseudonymiser, input_digest, routing_input, store_key

ORG = "node-a"
OTHER = "node-b"
PATIENTS = [(NATIONAL_ID_SYSTEM, f"HF-1949-{i:04d}") for i in range(12)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"), ORG, OTHER)


@pytest.fixture
def authority(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Authority]:
    with running_authority(tmp_path, pki["ca"], ORG) as auth:
        yield auth


@pytest.fixture
def node_db(db_url: str) -> Iterator[Engine]:
    """The node's database, every schema migrated in the node's one place."""
    engine = make_engine(db_url)
    migrate_schemas(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _pseudonymiser(authority: Authority, pki: dict[str, Path], engine: Engine) -> OprfPseudonymiser:
    """What a node process builds at start: a fresh client, an empty memory, the node's store."""
    creds = load_org(pki[ORG])
    return OprfPseudonymiser(
        OprfPseudonyms(authority.url, creds), store=SqlPseudonymStore(engine, store_key(creds))
    )


def _digest(pki: dict[str, Path], x: bytes, org: str = ORG) -> bytes:
    """The store's digest of ``x`` as the node ``org`` keys it."""
    return input_digest(store_key(load_org(pki[org])), x)


def _rows(engine: Engine, kind: str | None = None) -> int:
    query = select(func.count()).select_from(pseudonyms)
    if kind is not None:
        query = query.where(pseudonyms.c.kind == kind)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_restarted_node_asks_the_authority_nothing_for_patients_it_knows(
    authority: Authority, pki: dict[str, Path], db_url: str, tmp_path: Path
) -> None:
    """Through the node's composition root (build_services): the node's pseudonymiser keeps
    regional and routing pseudonyms in the node's database, and a second start of the node on
    the same database is answered from it."""
    settings = load_settings(
        tmp_path / "node", org_id=ORG, db_url=db_url, pseudonym_url=authority.url,
        pki={"credentials_dir": pki[ORG], "ca_dir": pki["ca"]},
    )  # fmt: skip
    first = build_services(settings)
    try:
        regional = first.pseudonymiser.regional(PATIENTS)
        routing = [first.pseudonymiser.routing(p, ORG, "clinic-b") for p in regional[:3]]
        engine = first.engine
        assert _rows(engine, "regional") == len(PATIENTS) and _rows(engine, "routing") == 3
        # what is stored: keyed digests of the inputs, never the inputs (nor any identifier),
        # nor their plain SHA-256 (which a thief of the table could brute-force offline)
        with engine.connect() as conn:
            stored = " ".join(str(v) for row in conn.execute(select(pseudonyms)) for v in row)
        inputs = [oprf_input(*p) for p in PATIENTS]
        assert all(value not in stored for _, value in PATIENTS)
        assert all(x.decode() not in stored and x.hex() not in stored for x in inputs)
        assert all(hashlib.sha256(x).hexdigest() not in stored for x in inputs)
        assert _digest(pki, inputs[0]).hex() in stored
    finally:
        first.close()
    asked = authority.evaluated()
    assert asked == len(PATIENTS) + 3  # each once

    again = build_services(settings)  # the node restarted: empty memory, same database
    try:
        assert again.pseudonymiser.regional(PATIENTS) == regional
        assert [again.pseudonymiser.routing(p, "clinic-b", ORG) for p in regional[:3]] == routing
        assert authority.evaluated() == asked  # nothing asked again
        new = again.pseudonymiser.regional([(NATIONAL_ID_SYSTEM, "HF-1949-0999")])
        assert new[0] not in regional and authority.evaluated() == asked + 1  # a new patient is
    finally:  # asked, once
        again.close()


def test_a_new_key_version_is_asked_fresh_and_the_old_version_still_answers(
    authority: Authority, pki: dict[str, Path], node_db: Engine
) -> None:
    ids = PATIENTS[:4]
    v1 = _pseudonymiser(authority, pki, node_db).regional(ids)
    v1_routing = _pseudonymiser(authority, pki, node_db).routing(v1[0], ORG, "clinic-b")
    assert all(p.startswith("v1.") for p in v1)
    authority.stop()
    assert rotate(authority.root / "svc" / "oprf-keys") == 2
    authority.start()
    before = authority.evaluated()

    node = _pseudonymiser(authority, pki, node_db)  # restarted after the rotation
    v2 = node.regional(ids)
    assert all(p.startswith("v2.") for p in v2) and set(v2).isdisjoint(v1)
    assert authority.evaluated() == before + len(ids)  # the new version is asked, each once
    # the old version's entries are still there and answer when asked by version
    assert _rows(node_db, "regional") == 2 * len(ids)
    assert node.routing(v1[0], ORG, "clinic-b") == v1_routing
    assert authority.evaluated() == before + len(ids)
    v2_routing = node.routing(v2[0], ORG, "clinic-b")  # the new version's: asked fresh
    assert v2_routing != v1_routing and authority.evaluated() == before + len(ids) + 1
    # and a further restart is answered from the store under the current version
    assert _pseudonymiser(authority, pki, node_db).regional(ids) == v2
    assert authority.evaluated() == before + len(ids) + 1


def test_a_key_re_made_under_the_same_number_is_asked_fresh_and_warned_about(
    authority: Authority, pki: dict[str, Path], node_db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The reviewer's scenario: the authority loses its volume (key folder and database) and
    starts again with a new key, again called v1. A restarted node, and one that stayed up, must
    not answer from what they kept under the old v1: they ask afresh, agree with a node that
    never knew the old key, and log a warning that names no patient."""
    ids = PATIENTS[:4]
    old = _pseudonymiser(authority, pki, node_db).regional(ids)
    old_routing = _pseudonymiser(authority, pki, node_db).routing(old[0], ORG, "clinic-b")
    creds = load_org(pki[ORG])
    running = OprfPseudonymiser(
        OprfPseudonyms(authority.url, creds),
        store=SqlPseudonymStore(node_db, store_key(creds)),
        version_ttl=0.0,  # re-reads /keys on every call
    )
    assert running.regional(ids) == old
    authority.stop()
    shutil.rmtree(authority.root / "svc")  # the authority's volume is lost
    authority.start()  # a new key, again v1
    assert authority.evaluated() == 0  # (a new ledger too)

    caplog.set_level(logging.WARNING, logger="ipjms.pseudonymiser")
    restarted = _pseudonymiser(authority, pki, node_db)
    new = restarted.regional(ids)
    assert all(p.startswith("v1.") for p in new) and set(new).isdisjoint(old)
    assert authority.evaluated() == len(ids)  # asked afresh: nothing answered from the store
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("is not the key this node's pseudonyms of v1 were made under" in w for w in warnings)
    assert not any(value in w for w in warnings for _, value in ids)  # no identifier logged
    assert not any(p in w for w in warnings for p in old + new)  # nor a pseudonym

    assert running.regional(ids) == new  # the node that stayed up moved to the new key too
    new_routing = restarted.routing(new[0], ORG, "clinic-b")
    assert new_routing != old_routing
    # what a node that never knew the old key gets: the same
    elsewhere = OprfPseudonymiser(OprfPseudonyms(authority.url, load_org(pki[ORG])))
    assert elsewhere.regional(ids) == new
    assert elsewhere.routing(new[0], "clinic-b", ORG) == new_routing
    # and a further restart answers from the store, under the new key only
    asked = authority.evaluated()
    assert _pseudonymiser(authority, pki, node_db).regional(ids) == new
    assert authority.evaluated() == asked


def _insert_at_revision(engine: Engine, revision: str, sql: str, params: dict[str, str]) -> None:
    """Migrate the store's tables only as far as ``revision`` (an older one) and insert a row as
    that revision kept it."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.execute(text(sql), params)


def test_entries_stored_without_a_key_fingerprint_are_deleted_by_the_migration(
    db_url: str, pki: dict[str, Path]
) -> None:
    """A store made before fingerprints (revision n0001) cannot say which key made its
    entries: the upgrade deletes them rather than trust them."""
    engine = make_engine(db_url)
    try:
        _insert_at_revision(
            engine,
            "n0001",
            "INSERT INTO node_pseudonyms (kind, key_version, input_digest, pseudonym) "
            "VALUES ('regional', 1, :d, 'v1.old')",
            {"d": hashlib.sha256(oprf_input(*PATIENTS[0])).hexdigest()},
        )
        upgrade_schema(engine, MIGRATIONS_DIR)
        assert _rows(engine) == 0
        store = SqlPseudonymStore(engine, store_key(load_org(pki[ORG])))
        digest = store.digest(oprf_input(*PATIENTS[0]))
        store.save("regional", (1, "ab" * 32), {digest: "v1.new"})
        assert store.load("regional", (1, "ab" * 32), [digest]) == {digest: "v1.new"}
        assert store.load("regional", (1, "cd" * 32), [digest]) == {}
        assert store.fingerprints(1) == {"ab" * 32}
    finally:
        engine.dispose()


def test_entries_under_a_plain_sha256_digest_are_deleted_by_the_migration(
    db_url: str, pki: dict[str, Path]
) -> None:
    """A store of revision n0002 keeps the plain SHA-256 of each input — what a thief of the
    table brute-forces over the identifier space offline. n0003 deletes those entries (none
    would match a keyed digest again); the store then works with keyed digests."""
    x = oprf_input(*PATIENTS[0])
    engine = make_engine(db_url)
    try:
        _insert_at_revision(
            engine,
            "n0002",
            "INSERT INTO node_pseudonyms (kind, key_version, key_fingerprint, "
            "input_digest, pseudonym) VALUES ('regional', 1, :fp, :d, 'v1.old')",
            {"fp": "ab" * 32, "d": hashlib.sha256(x).hexdigest()},
        )
        assert _rows(engine) == 1
        upgrade_schema(engine, MIGRATIONS_DIR)
        assert _rows(engine) == 0
        store = SqlPseudonymStore(engine, store_key(load_org(pki[ORG])))
        store.save("regional", (1, "ab" * 32), {store.digest(x): "v1.new"})
        assert store.load("regional", (1, "ab" * 32), [store.digest(x)]) == {
            store.digest(x): "v1.new"
        }
    finally:
        engine.dispose()


def test_the_store_digest_is_keyed_per_organisation_and_not_a_plain_hash(
    pki: dict[str, Path], node_db: Engine
) -> None:
    """Two organisations' stores give different digests for the same input, neither the plain
    SHA-256 of the input; the same credentials loaded again (a restart) give the same key; a
    store of another organisation over the same table finds nothing of this one's entries."""
    x = oprf_input(*PATIENTS[0])
    mine, theirs = store_key(load_org(pki[ORG])), store_key(load_org(pki[OTHER]))
    assert mine == store_key(load_org(pki[ORG])) and len(mine) == 32
    assert mine != theirs
    a, b = input_digest(mine, x), input_digest(theirs, x)
    assert a != b and hashlib.sha256(x).digest() not in (a, b)
    key = (1, "ab" * 32)
    SqlPseudonymStore(node_db, mine).save("regional", key, {a: "v1.mine"})
    assert SqlPseudonymStore(node_db, mine).load("regional", key, [a]) == {a: "v1.mine"}
    other = SqlPseudonymStore(node_db, theirs)
    assert other.load("regional", key, [other.digest(x)]) == {}
    with pytest.raises(ValueError, match="32 bytes"):
        SqlPseudonymStore(node_db, b"short")


def test_a_node_started_under_a_re_issued_signing_key_deletes_the_old_keys_entries(
    authority: Authority, pki: dict[str, Path], db_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The organisation's signing key is re-issued (same organisation, same CA, a new key): the
    store key derived from it changes, so nothing stored under the old one can match again. The
    node, started under the new key (its composition root, build_services), deletes those
    entries at start — none lingers — and asks the authority again; a restart under the same key
    deletes nothing."""
    from trust.pki import issue_org

    def settings(credentials: Path, name: str):  # type: ignore[no-untyped-def]
        return load_settings(
            tmp_path / name, org_id=ORG, db_url=db_url, pseudonym_url=authority.url,
            pki={"credentials_dir": credentials, "ca_dir": pki["ca"]},
        )  # fmt: skip

    ids = PATIENTS[:4]
    first = build_services(settings(pki[ORG], "before"))
    try:
        old = first.pseudonymiser.regional(ids)
        first.pseudonymiser.routing(old[0], ORG, "clinic-b")
        assert _rows(first.engine) == len(ids) + 1
    finally:
        first.close()
    reissued = tmp_path / "reissued"
    issue_org(pki["ca"], ORG, host="127.0.0.1", out_dir=reissued)
    assert store_key(load_org(reissued)) != store_key(load_org(pki[ORG]))

    caplog.set_level(logging.WARNING, logger="ipjms.pseudonymiser")
    asked = authority.evaluated()
    after = build_services(settings(reissued, "after"))  # the node restarted, new signing key
    try:
        assert _rows(after.engine) == 0  # deleted at start, before anything was asked
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"{len(ids) + 1} entries stored under another store key" in w for w in warnings)
        assert after.pseudonymiser.regional(ids) == old  # the authority's answer is the same
        assert authority.evaluated() == asked + len(ids)  # asked again, each once
        stored = _rows(after.engine)
        assert stored == len(ids)
    finally:
        after.close()
    caplog.clear()
    again = build_services(settings(reissued, "again"))  # a restart under the same key
    try:
        assert _rows(again.engine) == stored  # nothing deleted
        assert again.pseudonymiser.regional(ids) == old
        assert authority.evaluated() == asked + len(ids)
        assert not [r for r in caplog.records if "another store key" in r.getMessage()]
    finally:
        again.close()


def test_entries_from_before_the_key_check_are_deleted_at_the_first_start(
    db_url: str, pki: dict[str, Path]
) -> None:
    """Entries stored at n0003 name no store key: the migration to n0004 keeps them (it runs
    without the organisation's key) with a format row naming no key, and the node's first start
    deletes them; the row then names the node's key, and the store works and keeps its entries."""
    from node.pseudonym_store import open_node_store
    from node.pseudonym_store.tables import store_format

    key = store_key(load_org(pki[ORG]))
    x = oprf_input(*PATIENTS[0])
    engine = make_engine(db_url)
    try:
        _insert_at_revision(
            engine,
            "n0003",
            "INSERT INTO node_pseudonyms (kind, key_version, key_fingerprint, "
            "input_digest, pseudonym) VALUES ('regional', 1, :fp, :d, 'v1.old')",
            {"fp": "ab" * 32, "d": input_digest(key, x).hex()},
        )
        upgrade_schema(engine, MIGRATIONS_DIR)
        assert _rows(engine) == 1
        store = open_node_store(engine, key)
        assert _rows(engine) == 0
        with engine.connect() as conn:
            marker = conn.execute(select(store_format)).all()
        assert [tuple(r) for r in marker] == [("hmac-sha256-v1", store.key_check())]
        store.save("regional", (1, "ab" * 32), {store.digest(x): "v1.new"})
        assert open_node_store(engine, key).load("regional", (1, "ab" * 32), [store.digest(x)])
        assert _rows(engine) == 1
    finally:
        engine.dispose()


def _refuse_insert_of(engine: Engine, digest_hex: str) -> None:
    """A real database refusal of one row (a trigger): what a full disk or a lost connection
    does to the middle of a batch."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_pseudonym() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.input_digest = '{digest_hex}' THEN "
                    "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON node_pseudonyms "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_pseudonym()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON node_pseudonyms "
                    f"WHEN NEW.input_digest = '{digest_hex}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )


def _allow_inserts(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER refuse ON node_pseudonyms"))
        else:
            conn.execute(text("DROP TRIGGER refuse"))


def test_a_failed_write_leaves_nothing_half_done(
    authority: Authority, pki: dict[str, Path], node_db: Engine
) -> None:
    """The third row of a batch of five is refused by the database: the call fails, no row of
    the batch is stored, and nothing was handed out or kept in memory either — the next call
    asks the authority again for all five (and then stores them)."""
    ids = PATIENTS[:5]
    _refuse_insert_of(node_db, _digest(pki, oprf_input(*ids[2])).hex())
    node = _pseudonymiser(authority, pki, node_db)
    with pytest.raises(DBAPIError, match="refused by the test"):
        node.regional(ids)
    assert _rows(node_db) == 0
    assert authority.evaluated() == len(ids)  # the authority did answer; nothing was kept

    _allow_inserts(node_db)
    got = node.regional(ids)
    assert authority.evaluated() == 2 * len(ids)  # asked again: no half-kept answer was used
    assert _rows(node_db, "regional") == len(ids)
    assert _pseudonymiser(authority, pki, node_db).regional(ids) == got
    assert authority.evaluated() == 2 * len(ids)

    # the same for a routing pseudonym: refused, nothing stored, nothing returned
    _refuse_insert_of(node_db, _digest(pki, routing_input(got[0], ORG, "clinic-b")).hex())
    with pytest.raises(DBAPIError, match="refused by the test"):
        node.routing(got[0], ORG, "clinic-b")
    assert _rows(node_db, "routing") == 0
