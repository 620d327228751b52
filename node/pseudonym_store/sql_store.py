"""``trust.pseudonymiser.PseudonymStore`` in the node's database (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from node.pseudonym_store.tables import pseudonyms
from trust.pseudonymiser import KeyId

__all__ = ["SqlPseudonymStore", "KINDS"]

KINDS = ("regional", "routing")
_CHUNK = 500  # digests per SELECT … IN (…): well inside both databases' parameter limits


def _insert(engine: Engine):  # type: ignore[no-untyped-def]
    """INSERT … ON CONFLICT DO NOTHING: an entry already stored (another worker process got the
    same pseudonym first — the OPRF is deterministic, so it is the same value) is kept."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(pseudonyms).on_conflict_do_nothing(
        index_elements=["kind", "key_version", "key_fingerprint", "input_digest"]
    )


class SqlPseudonymStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, kind: str, key: KeyId, digests: Sequence[bytes]) -> dict[bytes, str]:
        _check(kind)
        version, fingerprint = key
        found: dict[bytes, str] = {}
        hexes = [d.hex() for d in digests]
        with self.engine.connect() as conn:
            for start in range(0, len(hexes), _CHUNK):
                rows = conn.execute(
                    select(pseudonyms.c.input_digest, pseudonyms.c.pseudonym).where(
                        pseudonyms.c.kind == kind,
                        pseudonyms.c.key_version == version,
                        pseudonyms.c.key_fingerprint == fingerprint,
                        pseudonyms.c.input_digest.in_(hexes[start : start + _CHUNK]),
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
            conn.execute(_insert(self.engine), rows)

    def fingerprints(self, version: int) -> set[str]:
        query = (
            select(pseudonyms.c.key_fingerprint)
            .where(pseudonyms.c.key_version == version)
            .distinct()
        )
        with self.engine.connect() as conn:
            return {str(row[0]) for row in conn.execute(query)}


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a pseudonym's kind is one of {KINDS}, not {kind!r}")
