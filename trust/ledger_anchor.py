"""Periodic signed checkpoints of a service's audit ledger (see :mod:`trust.ledger_checkpoint`).

A service that holds organisation credentials runs one :class:`LedgerAnchor`: every
``interval`` seconds, if the ledger's head moved, it signs the head with the organisation's
signing key and appends the checkpoint to a file outside the ledger's database (by default
``<data_dir>/audit-checkpoints.jsonl``; put it on other storage, or ship it to a witness, for a
stronger anchor). A witness organisation countersigns with ``ipjms audit cosign``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from trust.ledger_checkpoint import Checkpoint, append_checkpoint, read_checkpoints, sign_checkpoint

__all__ = ["LedgerAnchor", "CHECKPOINT_FILE"]

log = logging.getLogger("ipjms.trust.anchor")
CHECKPOINT_FILE = "audit-checkpoints.jsonl"


class LedgerAnchor:
    """``ledger``: a :class:`trust.audit_ledger.AuditLedger` (its ``head()`` is signed)."""

    def __init__(
        self, ledger: Any, creds: Any, path: Path | str, *, log_id: str, interval: float
    ) -> None:
        self.ledger = ledger
        self.creds = creds
        self.path = Path(path)
        self.log_id = log_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        existing = read_checkpoints(self.path)
        self._last = max((c.seq for c in existing if c.log == log_id), default=-1)

    def checkpoint(self) -> Checkpoint | None:
        """Sign and append the current head if it moved since the last checkpoint."""
        seq, head_hash = self.ledger.head()
        if seq == self._last:
            return None
        cp = sign_checkpoint(self.creds, self.log_id, seq, head_hash)
        append_checkpoint(self.path, cp)
        self._last = seq
        log.info("audit checkpoint log=%s seq=%d", self.log_id, seq)
        return cp

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception as exc:  # keep anchoring; the next round tries again
                log.error("audit checkpoint failed: %s", type(exc).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-anchor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last checkpoint of what was appended meanwhile."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.checkpoint()
        except Exception as exc:
            log.error("final audit checkpoint failed: %s", type(exc).__name__)
