"""Hash-chain primitives (pure): how ledger entries are hashed and how a chain is checked.

``hash = SHA-256(canonical JSON of {"seq", "prev_hash", "recorded_at", "event",
"patient_pseudonym"})`` — the pseudonym column is hashed too, so nobody can hide a disclosure
from a patient's list by editing it. The first
entry (seq 1) links to :data:`GENESIS_HASH`. :func:`verify_chain` walks the rows in ``seq``
order and names the first one that was edited, deleted (a gap, or a missing tail when the
expected head is known) or reordered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trust.canonical_json import canonical_json

__all__ = ["GENESIS_HASH", "ChainRow", "VerifyReport", "entry_hash", "verify_chain"]

GENESIS_HASH = "0" * 64


def entry_hash(
    seq: int,
    prev_hash: str,
    recorded_at: str,
    event: Mapping[str, Any],
    patient_pseudonym: str | None = None,
) -> str:
    body = {
        "seq": seq,
        "prev_hash": prev_hash,
        "recorded_at": recorded_at,
        "event": event,
        "patient_pseudonym": patient_pseudonym,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    seq: int
    prev_hash: str
    recorded_at: str
    event: Mapping[str, Any]
    hash: str
    patient_pseudonym: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"ok, {self.checked} entries"
        if self.first_bad_seq is None:
            return self.problem
        return f"entry {self.first_bad_seq}: {self.problem}"


def verify_chain(rows: Iterable[ChainRow], *, head: tuple[int, str] | None = None) -> VerifyReport:
    """Check rows (in ascending ``seq`` order). ``head`` = (last seq, last hash) as recorded
    separately by the ledger, so deleting the newest entries is detected too."""
    rows = list(rows)
    by_hash = {row.hash: row.seq for row in rows}
    expected_seq, prev_hash = 1, GENESIS_HASH
    for checked, row in enumerate(rows):
        if row.seq != expected_seq:
            if row.seq < expected_seq:
                return VerifyReport(False, checked, row.seq, "reordered (duplicate position)")
            missing = (
                f"{expected_seq}"
                if row.seq == expected_seq + 1
                else f"{expected_seq}..{row.seq - 1}"
            )
            return VerifyReport(
                False,
                checked,
                expected_seq,
                f"deleted (entries {missing} missing before {row.seq})",
            )
        content_ok = (
            entry_hash(row.seq, row.prev_hash, row.recorded_at, row.event, row.patient_pseudonym)
            == row.hash
        )
        link_ok = row.prev_hash == prev_hash
        if not link_ok and row.prev_hash in by_hash and by_hash[row.prev_hash] != row.seq - 1:
            return VerifyReport(
                False,
                checked,
                row.seq,
                f"reordered (this entry was written after entry {by_hash[row.prev_hash]})",
            )
        if not content_ok:
            return VerifyReport(False, checked, row.seq, "edited (content does not match its hash)")
        if not link_ok:
            return VerifyReport(
                False, checked, row.seq, "edited or preceded by a deleted entry (broken link)"
            )
        expected_seq, prev_hash = row.seq + 1, row.hash
    count = len(rows)
    if head is not None:
        head_seq, head_hash = head
        if head_seq > count:
            return VerifyReport(
                False, count, count + 1, f"deleted (ledger head records {head_seq} entries)"
            )
        if head_seq < count:
            return VerifyReport(
                False, count, head_seq + 1, f"inserted outside the ledger (head records {head_seq})"
            )
        if count and head_hash != prev_hash:
            return VerifyReport(False, count, count, "edited (does not match the ledger head)")
    return VerifyReport(True, count)
