"""Failed logins at the node, into the node's audit ledger.

Every refused token request (``AuthService.failure_sinks``) becomes a ``login_failure``
AuditEvent (DICOM 110114 / 110122, serious failure) in a hash-chained ledger: on the embedded
default a database of its own, ``<data dir>/audit.db`` (``ipjms audit verify --data-dir D
--service audit``); on a node configured with ``--db URL`` (PostgreSQL), tables in that database
(``ipjms audit verify --db URL``), so such a node keeps no state in SQLite. No PHI: the user
is named only when it is a known account or registered client (otherwise ``unknown``), and the
reason is the fixed code of :class:`~node.auth.service.LoginFailure`.
"""

from __future__ import annotations

from collections.abc import Callable

from node.auth.service import LoginFailure
from node.settings import NodeSettings
from servicekit.storage import make_engine, sqlite_url
from trust import audit_events
from trust.audit_ledger import AuditLedger

__all__ = ["LEDGER_NAME", "node_ledger", "login_failure_sink"]

LEDGER_NAME = "audit"  # <data dir>/audit.db on the embedded default


def node_ledger(settings: NodeSettings) -> AuditLedger:
    return AuditLedger(make_engine(settings.db_url or sqlite_url(settings.data_dir, LEDGER_NAME)))


def login_failure_sink(ledger: AuditLedger, org_id: str) -> Callable[[LoginFailure], None]:
    def record(failure: LoginFailure) -> None:
        event = audit_events.login_failure(
            username=failure.known_subject or "unknown",
            observer=org_id,
            reason=f"{failure.grant_type}: {failure.reason}",
        )
        ledger.append(event)

    return record
