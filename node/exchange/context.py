"""Everything the node's exchange code needs at run time: built in each worker process from the
node's services (``node.exchange.lifecycle.build_context``), nothing of them built again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from node.exchange.client import DirectoryEntry, ExchangeClient
from node.store import FhirStore
from trust.pki import OrgCredentials
from trust.pseudonymiser import Pseudonymiser

__all__ = ["ExchangeContext", "PhaseObserver", "ignore_phases"]

# (direction "out" | "in", phase, seconds): where an exchange's time goes (node /metrics).
PhaseObserver = Callable[[str, str, float], None]


def ignore_phases(_direction: str, _phase: str, _seconds: float) -> None:
    return None


@dataclass
class ExchangeContext:
    org_id: str
    org_name: str
    store: FhirStore
    engine: Engine
    creds: OrgCredentials
    client: ExchangeClient
    consent: Any  # consent.client.ConsentClient
    pseudonymiser: Pseudonymiser
    ca_dir: Path | None = None
    now: Callable[[], float] | None = None
    observe: PhaseObserver = ignore_phases
    # Set when an envelope stays pending (the coordinator unreachable): wakes the outbox loop.
    pending: threading.Event = field(default_factory=threading.Event)
    _directory: dict[str, DirectoryEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def organisation(self, org_id: str, *, refresh: bool = False) -> DirectoryEntry:
        """Directory entry (cached; ``refresh`` after a certificate rotation); its certificates
        are verified against the CA wherever they are used."""
        with self._lock:
            cached = None if refresh else self._directory.get(org_id)
        if cached is not None:
            return cached
        entry = self.client.organisation(org_id)
        with self._lock:
            self._directory[org_id] = entry
        return entry

    @contextmanager
    def timed(self, direction: str, phase: str) -> Iterator[None]:
        """Time one step of sending ("out") or importing ("in"); a failed step is not timed."""
        started = time.perf_counter()
        yield
        self.observe(direction, phase, time.perf_counter() - started)

    def revoked(self) -> frozenset[str | int]:
        """The CA's revocation list. Fails closed: no CA folder configured, or a missing, stale
        or rolled-back CRL raises ``CertificateError``, so no certificate is trusted."""
        from trust.certificates import CertificateError
        from trust.pki import revocation_list

        if self.ca_dir is None:
            raise CertificateError("no CA folder (pki.ca_dir) configured: revocation unknown")
        return revocation_list(self.ca_dir)
