"""The unit of work: the one way anything is written to the store's records.

``FhirStore.write(work, writer=…)`` opens a database transaction, hands ``work`` a
:class:`UnitOfWork`, and when ``work`` returns appends what it changed to the commit log — in the
same transaction, as its last statement — then commits, and only then publishes the commit events
to in-process subscribers. A write that raises (a refused entry, a lost race, a failed commit)
rolls back: no version, no log row, no event.

Inside ``work``::

    results = uow.apply(entries)     # parsed Entry list → EntryResult list (node.store.entries)
    uow.conn                         # the transaction's connection: write your own rows with it
    uow.commit_position(name, pos)   # a subscriber's position, committed with these writes
"""

from __future__ import annotations

from sqlalchemy import Connection

from node.store.commit_log import store_position
from node.store.entries import Entry, EntryResult
from node.store.transactions import apply_entries
from node.store.writes import NewVersion

__all__ = ["UnitOfWork"]


class UnitOfWork:
    def __init__(
        self, conn: Connection, base_url: str, referential_integrity: bool = False
    ) -> None:
        self.conn = conn
        self.base_url = base_url
        self.referential_integrity = referential_integrity
        self.versions: list[NewVersion] = []  # what was written, in write order

    def apply(self, entries: list[Entry]) -> list[EntryResult]:
        """Apply write entries atomically with the rest of this unit of work (results in entry
        order; GET entries get a placeholder). Validate them first, outside the transaction,
        with ``FhirStore.prevalidate`` (else they are validated here, holding the write lock)."""
        results, versions = apply_entries(
            self.conn, entries, self.base_url, referential_integrity=self.referential_integrity
        )
        self.versions += versions
        return results

    def commit_position(self, name: str, position: int) -> None:
        """Record subscriber ``name``'s position in this transaction (exactly-once effects: a
        subscriber's writes and the position that says it made them commit together)."""
        store_position(self.conn, name, position)
