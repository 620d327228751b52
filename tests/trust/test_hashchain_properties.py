"""Property tests for the pure hash chain: one tampered row is always found and named."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from trust.hashchain import GENESIS_HASH, ChainRow, entry_hash, verify_chain


def _chain(events: list[dict[str, int]]) -> list[ChainRow]:
    rows, prev = [], GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        stamp = f"2026-01-01T00:00:{seq % 60:02d}.000000Z"
        h = entry_hash(seq, prev, stamp, event, f"p{seq % 3}")
        rows.append(ChainRow(seq, prev, stamp, event, h, f"p{seq % 3}"))
        prev = h
    return rows


events = st.lists(st.fixed_dictionaries({"n": st.integers(0, 10**6)}), min_size=2, max_size=30)


@settings(max_examples=200, deadline=None)
@given(events, st.data())
def test_one_tampered_row_is_named(evs: list[dict[str, int]], data: st.DataObject) -> None:
    rows = _chain(evs)
    head = (len(rows), rows[-1].hash)
    assert verify_chain(rows, head=head).ok
    i = data.draw(st.integers(0, len(rows) - 1), label="row")
    op = data.draw(st.sampled_from(["edit-event", "edit-time", "edit-pseudonym", "delete", "swap"]))
    tampered = list(rows)
    if op == "edit-event":
        tampered[i] = dataclasses.replace(rows[i], event={"n": rows[i].event["n"] + 1})
        expected = (i + 1, "edited")
    elif op == "edit-time":
        tampered[i] = dataclasses.replace(rows[i], recorded_at="2000-01-01T00:00:00.000000Z")
        expected = (i + 1, "edited")
    elif op == "edit-pseudonym":
        tampered[i] = dataclasses.replace(rows[i], patient_pseudonym="someone-else")
        expected = (i + 1, "edited")
    elif op == "delete":
        del tampered[i]
        expected = (i + 1, "deleted")
    else:
        if i == len(rows) - 1:
            i -= 1
        a, b = rows[i], rows[i + 1]
        tampered[i] = dataclasses.replace(b, seq=a.seq)
        tampered[i + 1] = dataclasses.replace(a, seq=b.seq)
        expected = (i + 1, "reordered")
    report = verify_chain(tampered, head=head)
    assert not report.ok
    assert (report.first_bad_seq, report.problem.split()[0]) == expected, report
