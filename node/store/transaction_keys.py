"""Idempotent transactions: a client-supplied key remembered with the response it was answered.

A transaction Bundle sent with an idempotency key (``Idempotency-Key`` on ``POST /fhir``) is
remembered per writer in ``fhir_transaction_key``: the key, the SHA-256 of the request Bundle in
canonical JSON, and the transaction-response Bundle — inserted in the same database transaction
as the transaction's writes, so the key is remembered if and only if the writes committed. A retry
with the same key and the same Bundle gets the remembered response (the same ids and versions)
and writes nothing; the same key with a different Bundle is refused (422).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, insert, select

from node.store.tables import transaction_key
from node.store.writes import now_utc
from servicekit.outcome import BadRequest, Unprocessable

__all__ = ["MAX_KEY_LENGTH", "check_key", "request_hash", "remembered", "remember"]

MAX_KEY_LENGTH = 200


def check_key(key: str) -> str:
    """The key as given, if it is 1–200 visible ASCII characters; else BadRequest."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise BadRequest(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters (no spaces)"
        )
    return key


def request_hash(bundle: dict[str, Any]) -> str:
    """SHA-256 of the Bundle as canonical JSON (key order and whitespace do not matter)."""
    canonical = json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def remembered(conn: Connection, writer: str, key: str, digest: str) -> dict[str, Any] | None:
    """The response remembered for ``(writer, key)``, or None; 422 if the key was used for a
    different Bundle."""
    row = conn.execute(
        select(transaction_key.c.request_hash, transaction_key.c.response).where(
            transaction_key.c.writer == writer, transaction_key.c.idempotency_key == key
        )
    ).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise Unprocessable(
            "Idempotency-Key was already used for a different transaction Bundle "
            "(a retry must resend the same Bundle; use a new key for a new transaction)"
        )
    return dict(row.response)


def remember(
    conn: Connection, writer: str, key: str, digest: str, response: dict[str, Any]
) -> None:
    """Remember ``response`` for ``(writer, key)`` in the transaction ``conn`` is in (a
    concurrent twin inserting the same key loses on the primary key, and is retried)."""
    conn.execute(
        insert(transaction_key).values(
            writer=writer,
            idempotency_key=key,
            request_hash=digest,
            response=response,
            created_at=now_utc(),
        )
    )
