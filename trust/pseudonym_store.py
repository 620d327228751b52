"""The one SQL implementation of :class:`trust.pseudonymiser.PseudonymStore` (issue 23): the
pseudonyms a node obtained from the pseudonymisation authority, kept so a restart asks again for
none of them.

Two places use it, each with its own table:

* the node's web app — ``node/pseudonym_store``: table ``node_pseudonyms`` in the node's own
  database (SQLite or PostgreSQL), its schema under the node's Alembic migrations;
* the node's SuperNode and ``ipjms fl score`` (``federated/pseudonyms.py``), which have no
  database of their own — :func:`open_file_store`: a SQLite file ``pseudonyms.db`` in their
  state folder, readable by their user only (0600).

Both are keyed alike — kind, the authority's key version *and* its fingerprint, and
HMAC-SHA256 of the OPRF input (never the input, which names the patient) under the store key
(``trust.pseudonymiser.store_key``: derived from the organisation's own signing key, which is in
neither the file nor the database) — and hold no key: whoever reads them can neither compute a
pseudonym of anyone the node does not hold nor test a guessed identifier against a row (a plain
SHA-256 could be brute-forced over a 9-digit id space in minutes, bypassing the authority's
budget).

Both also keep a format row (:func:`format_table`: the format and a check value of the store
key) and drop every entry stored under another store key when the store is opened
(:func:`forget_other_keys`, the one rule): re-issuing the organisation's signing key changes the
store key, and nothing stored under the old one could ever match again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from servicekit.storage import make_engine, sqlite_url
from trust.pseudonymiser import KeyId, input_digest

__all__ = [
    "KINDS",
    "FILE_NAME",
    "FILE_FORMAT",
    "STORE_FORMAT",
    "pseudonym_table",
    "format_table",
    "forget_other_keys",
    "SqlPseudonymStore",
    "open_file_store",
]

KINDS = ("regional", "routing")
#: the SQLite file :func:`open_file_store` keeps in a state folder
FILE_NAME = "pseudonyms.db"
_CHUNK = 500  # digests per SELECT … IN (…): well inside both databases' parameter limits
#: a store's format (its format row, :func:`format_table`): its digests are HMAC-SHA256 under
#: the store key. A store without it (SHA-256 digests, before) or of another store key (the
#: organisation's signing key was re-issued) has its entries dropped when opened
STORE_FORMAT = "hmac-sha256-v1"
FILE_FORMAT = STORE_FORMAT  # the file store's ``store_format`` row (its name before the node's)
_KEY_CHECK_INPUT = b"ipjms-pseudonym-store-key-check"


def pseudonym_table(name: str, metadata: MetaData) -> Table:
    """One row per pseudonym obtained: ``kind`` "regional" (a patient's identifier) or
    "routing" (a regional pseudonym and a pair of organisations), the authority's key version
    and that key's fingerprint (its public key: a key re-made under the same number has
    another), the keyed digest (hex; ``trust.pseudonymiser.input_digest``) of the OPRF input,
    and the pseudonym."""
    return Table(
        name,
        metadata,
        Column("kind", String(16), primary_key=True),
        Column("key_version", Integer, primary_key=True, autoincrement=False),
        Column("key_fingerprint", String(64), primary_key=True),
        Column("input_digest", String(64), primary_key=True),
        Column("pseudonym", String(128), nullable=False),
    )


def format_table(name: str, metadata: MetaData) -> Table:
    """A store's format row: the format (:data:`STORE_FORMAT`) and ``key_check``, the store's
    :meth:`SqlPseudonymStore.key_check` — an HMAC of a constant under the store key, so it
    names the key without revealing it. :func:`forget_other_keys` reads and writes it."""
    return Table(
        name,
        metadata,
        Column("format", String(32), nullable=False),
        Column("key_check", String(64), nullable=False),
    )


def forget_other_keys(store: SqlPseudonymStore, marker: Table) -> int:
    """The one rule for entries under another store key, run when a store is opened: unless
    ``marker`` (a :func:`format_table`) names :data:`STORE_FORMAT` and this store's key check,
    every entry is deleted (none could match again: stored under another key — the
    organisation's signing key was re-issued — or in an older format) and the row is set to this
    key. Returns how many entries went. The row is read ``FOR UPDATE`` and updated in place, so
    two processes opening one PostgreSQL store at once delete once and leave one row."""
    check = store.key_check()
    with store.engine.begin() as conn:
        row = conn.execute(select(marker.c.format, marker.c.key_check).with_for_update()).first()
        if row is not None and tuple(row) == (STORE_FORMAT, check):
            return 0
        gone = int(conn.execute(delete(store.table)).rowcount or 0)
        if row is None:
            conn.execute(insert(marker).values(format=STORE_FORMAT, key_check=check))
        else:
            conn.execute(update(marker).values(format=STORE_FORMAT, key_check=check))
    return gone


class SqlPseudonymStore:
    """``PseudonymStore`` over ``table`` (made by :func:`pseudonym_table`) in ``engine``; its
    digests are keyed by ``key`` (``trust.pseudonymiser.store_key``), which it never writes."""

    def __init__(self, engine: Engine, table: Table, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a pseudonym store key has at least 32 bytes")
        self.engine = engine
        self.table = table
        self._key = key

    def digest(self, x: bytes) -> bytes:
        return input_digest(self._key, x)

    def key_check(self) -> str:
        """A value naming this store's key without revealing it (hex HMAC of a constant)."""
        return self.digest(_KEY_CHECK_INPUT).hex()

    def _insert(self):  # type: ignore[no-untyped-def]
        """INSERT … ON CONFLICT DO NOTHING: an entry already stored (another process got the
        same pseudonym first — the OPRF is deterministic, so it is the same value) is kept."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(self.table).on_conflict_do_nothing(
            index_elements=["kind", "key_version", "key_fingerprint", "input_digest"]
        )

    def load(self, kind: str, key: KeyId, digests: Sequence[bytes]) -> dict[bytes, str]:
        _check(kind)
        t = self.table
        version, fingerprint = key
        found: dict[bytes, str] = {}
        hexes = [d.hex() for d in digests]
        with self.engine.connect() as conn:
            for start in range(0, len(hexes), _CHUNK):
                rows = conn.execute(
                    select(t.c.input_digest, t.c.pseudonym).where(
                        t.c.kind == kind,
                        t.c.key_version == version,
                        t.c.key_fingerprint == fingerprint,
                        t.c.input_digest.in_(hexes[start : start + _CHUNK]),
                    )
                )
                found.update({bytes.fromhex(r.input_digest): str(r.pseudonym) for r in rows})
        return found

    def save(self, kind: str, key: KeyId, found: Mapping[bytes, str]) -> None:
        """All of ``found`` in one committed transaction, or (on any error) none of it."""
        _check(kind)
        if not found:
            return
        version, fingerprint = key
        rows = [
            {"kind": kind, "key_version": version, "key_fingerprint": fingerprint,
             "input_digest": d.hex(), "pseudonym": v}
            for d, v in found.items()
        ]  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(self._insert(), rows)

    def fingerprints(self, version: int) -> set[str]:
        t = self.table
        query = select(t.c.key_fingerprint).where(t.c.key_version == version).distinct()
        with self.engine.connect() as conn:
            return {str(row[0]) for row in conn.execute(query)}

    def close(self) -> None:
        """Close the engine's pooled connections (for a store that owns its engine)."""
        self.engine.dispose()


def open_file_store(folder: Path | str, key: bytes) -> SqlPseudonymStore:
    """The store of a process without a database of its own (a SuperNode, ``ipjms fl score``):
    ``<folder>/pseudonyms.db``, created readable and writable by its owner only (0600; SQLite
    gives its ``-wal`` and ``-shm`` files the same mode), its table created when absent, its
    digests keyed by ``key`` (``trust.pseudonymiser.store_key``). Its ``store_format`` row names
    :data:`FILE_FORMAT` and a check value of the key (an HMAC of a constant: it reveals nothing
    of the key): a file of an older format (plain SHA-256 digests) or of another key has its
    entries deleted, since none of them could ever match again.

    The file is a cache of the authority's answers, not a record: deleting it costs only the
    evaluations to re-ask (the budget, ``trust/oprf_service.py``), never a pseudonym's value —
    the authority's OPRF gives the same one again under the same key."""
    url = sqlite_url(folder, FILE_NAME.removesuffix(".db"))  # makes the folder
    path = Path(folder).resolve() / FILE_NAME
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)  # an older or copied file too
    engine = make_engine(url)
    metadata = MetaData()
    table = pseudonym_table("pseudonyms", metadata)
    marker = format_table("store_format", metadata)
    metadata.create_all(engine)
    store = SqlPseudonymStore(engine, table, key)
    forget_other_keys(store, marker)  # old digests, or another key's: never matched again
    return store


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a pseudonym's kind is one of {KINDS}, not {kind!r}")
