"""Commit events for subscribers: in process right after each commit, and durably from the log.

``store.events`` (a :class:`CommitEvents`) is what a feature that reacts to changes of the
record (the care engine) uses::

    sub = store.events.subscribe("care-engine", handle)   # handle(list[CommitEvent]) -> None
    # catches up from the position stored under "care-engine", then gets every new commit
    sub.poll()              # also read what other processes committed (call it on a timer)
    sub.close()

Delivery: events reach a subscriber in position order, each once per process, in batches of
whole commits. A handler that raises is not advanced: its events come again on the next commit
or ``poll()`` (log the failure, fix, it continues). After a handler returns, the subscription
stores its position durably (``auto_commit=True``, the default) — or, with ``auto_commit=False``,
the handler stores it itself, ideally in the same unit of work as its own writes
(``uow.commit_position(name, position)``), so that its effects and its position commit together.
A subscriber restarted under the same name resumes from its stored position: nothing missed,
nothing twice.

Handlers run on the thread that committed (or called ``poll``), one at a time per subscription;
a write made from inside a handler is delivered after the handler returns. Keep handlers quick
(hand the events to a queue) — the writer's request waits for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Literal

from sqlalchemy import Engine

from node.store.commit_log import (
    CommitEvent,
    head_position,
    read_since,
    store_position,
    stored_position,
)
from servicekit.storage import reader

__all__ = ["CommitEvents", "Subscription", "Handler", "CommitEvent"]

log = logging.getLogger("ipjms.node.store.events")
Handler = Callable[[list[CommitEvent]], None]
_PAGE = 1000


class Subscription:
    """One named subscriber (see the module docstring). Made by :meth:`CommitEvents.subscribe`."""

    def __init__(
        self, events: CommitEvents, name: str, handler: Handler, *, auto_commit: bool, start: int
    ) -> None:
        self.name = name
        self._events = events
        self._handler = handler
        self._auto_commit = auto_commit
        self._lock = threading.Lock()
        self._offered: dict[int, CommitEvent] = {}
        self._wanted = False  # something may be waiting (set by offer/poll, cleared by drain)
        self._delivering = False
        self.closed = False
        self.delivered = start  # everything up to here was handled

    def offer(self, events: Sequence[CommitEvent]) -> None:
        """Events just committed in this process; delivered now unless someone else is."""
        with self._lock:
            for e in events:
                if e.position > self.delivered:
                    self._offered[e.position] = e
            self._wanted = True
        self._drain()

    def poll(self) -> None:
        """Deliver whatever has been committed since the last delivery (other processes too)."""
        with self._lock:
            self._wanted = True
        self._drain()

    def close(self) -> None:
        self.closed = True
        self._events._remove(self)

    def _next_batch(self) -> list[CommitEvent]:
        """The events after ``delivered``: from what was offered when that is contiguous,
        else (a gap: another thread's or process's commit, or a restart) from the log."""
        start = self.delivered + 1
        with self._lock:
            batch: list[CommitEvent] = []
            while (start + len(batch)) in self._offered:
                batch.append(self._offered[start + len(batch)])
        if batch and not (self._offered.keys() - {e.position for e in batch}):
            return batch
        return self._events.read_since(self.delivered)

    def _drain(self) -> None:
        with self._lock:
            if self._delivering:
                return  # the delivering thread (maybe this one, in the handler) will see it
            self._delivering = True
        failed = True
        try:
            while True:
                failed = True  # until _deliver_all returns: an exception counts as a failure
                failed = self._deliver_all()
                with self._lock:
                    if failed or not self._wanted or self.closed:
                        return
        finally:
            with self._lock:
                self._delivering = False
                if failed:  # a handler or a read failed: wait for the next offer or poll
                    self._offered.clear()
                    self._wanted = False

    def _deliver_all(self) -> bool:
        """Deliver until nothing is left; True if the handler failed."""
        with self._lock:
            self._wanted = False
        while not self.closed:
            batch = self._next_batch()
            if not batch:
                return False
            batch = _whole_commits(batch)
            try:
                self._handler(batch)
            except Exception:
                log.exception("commit subscriber %s failed; it will get these again", self.name)
                return True
            last = batch[-1].position
            if self._auto_commit:
                self._events.commit_position(self.name, last)
            with self._lock:
                self.delivered = last
                for p in [p for p in self._offered if p <= last]:
                    del self._offered[p]
        return False


def _whole_commits(batch: list[CommitEvent]) -> list[CommitEvent]:
    """``batch`` without a trailing partial commit (a page boundary of the log may cut one),
    unless the batch is that one commit alone."""
    last_seq = batch[-1].commit_seq
    whole = [e for e in batch if e.commit_seq != last_seq]
    return batch if len(batch) < _PAGE or not whole else whole


class CommitEvents:
    """The store's commit events: subscribers, the log, and subscriber positions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = reader(engine)  # on SQLite, reads do not take the write lock
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._listeners: list[Callable[[], None]] = []

    def subscribe(
        self,
        name: str,
        handler: Handler,
        *,
        catch_up: bool = True,
        auto_commit: bool = True,
        new_from: Literal["beginning", "now"] = "beginning",
    ) -> Subscription:
        """Register ``handler`` under ``name`` (one subscription per name and process).

        It resumes after the position stored under ``name``; a name never stored starts at the
        beginning of the log, or with ``new_from="now"`` at its current head (stored at once, so
        a restart resumes there). ``catch_up``: deliver what is already waiting now, rather than
        with the next commit or ``poll()``."""
        if not name or len(name) > 100:
            raise ValueError("a subscriber name is 1-100 characters")
        with self._reader.connect() as conn:
            start = stored_position(conn, name)
        if start is None:
            start = self.head() if new_from == "now" else 0
            if start:
                self.commit_position(name, start)
        with self._lock:
            if any(s.name == name for s in self._subscriptions):
                raise ValueError(f"commit subscriber {name!r} is already subscribed")
            sub = Subscription(self, name, handler, auto_commit=auto_commit, start=start)
            self._subscriptions.append(sub)
        if catch_up:
            sub.poll()
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def on_commit(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every commit of this process (after the subscribers), with
        nothing but the fact: for waking a reader in another process, which then reads the log
        (the care worker process). No position, no delivery guarantee: the reader must still
        read the log on a timer. Quick and never raising, like a handler. Returns its remover."""

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        with self._lock:
            self._listeners.append(listener)
        return remove

    def publish(self, events: Sequence[CommitEvent]) -> None:
        """Called by the store after a commit (never for a rolled-back write)."""
        if not events:
            return
        with self._lock:
            subs, listeners = list(self._subscriptions), list(self._listeners)
        for sub in subs:
            try:
                sub.offer(events)
            except Exception:  # the write has committed: a subscriber never undoes or fails it
                log.exception("commit subscriber %s: delivery failed", sub.name)
        for listener in listeners:
            try:
                listener()
            except Exception:  # likewise
                log.exception("commit listener failed")

    def read_since(self, position: int, limit: int = _PAGE) -> list[CommitEvent]:
        """Committed events after ``position``, oldest first (at most ``limit``)."""
        with self._reader.connect() as conn:
            return read_since(conn, position, limit)

    def head(self) -> int:
        """The position of the last committed change (0 when nothing was written yet)."""
        with self._reader.connect() as conn:
            return head_position(conn)

    def stored_position(self, name: str) -> int:
        """How far ``name`` has handled the log, durably (0 when never stored)."""
        with self._reader.connect() as conn:
            return stored_position(conn, name) or 0

    def commit_position(self, name: str, position: int) -> None:
        """Durably record that ``name`` has handled every event up to ``position``."""
        with self._engine.begin() as conn:
            store_position(conn, name, position)
