"""Wake a recipient's open Inbox streams when an envelope for it is queued (in-process only;
streams also poll the database, so envelopes queued by another replica arrive too)."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["InboxNotifier"]


class InboxNotifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: dict[str, int] = defaultdict(int)
        self._cond = threading.Condition(self._lock)

    def generation(self, org_id: str) -> int:
        with self._lock:
            return self._generation[org_id]

    def notify(self, org_id: str) -> None:
        with self._cond:
            self._generation[org_id] += 1
            self._cond.notify_all()

    def wait(self, org_id: str, seen: int, timeout: float) -> None:
        """Block until something new is queued for ``org_id`` after ``seen``, or ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation[org_id] != seen, timeout=timeout)
