"""The node's FHIR R4 store: versioned resources, search indexes, transactions, commit events
(no HTTP here).

Public API (see README.md)::

    from node.store import FhirStore, SearchResult, WriteOutcome, migrate
"""

from node.store.commit_log import CommitEvent
from node.store.entries import Entry, EntryResult, ParsedBundle, parse_bundle
from node.store.events import CommitEvents, Subscription
from node.store.fhir_store import DEFAULT_WRITER, FhirStore, HistoryEntry, WriteOutcome, migrate
from node.store.idempotency import (
    derived_id,
    idempotent_request,
    identifier_criteria,
    token_value,
)
from node.store.ingest import idempotent_transaction
from node.store.search_exec import SearchResult
from node.store.search_params import SUPPORTED_SEARCH_PARAMS, SearchParamDef
from node.store.unit_of_work import UnitOfWork

__all__ = [
    "FhirStore",
    "HistoryEntry",
    "SearchResult",
    "WriteOutcome",
    "migrate",
    "DEFAULT_WRITER",
    "UnitOfWork",
    "CommitEvent",
    "CommitEvents",
    "Subscription",
    "Entry",
    "EntryResult",
    "ParsedBundle",
    "parse_bundle",
    "idempotent_transaction",
    "idempotent_request",
    "identifier_criteria",
    "token_value",
    "derived_id",
    "SUPPORTED_SEARCH_PARAMS",
    "SearchParamDef",
]
