"""The node's FHIR R4 store: versioned resources, search indexes, transactions (no HTTP here).

Public API (see README.md)::

    from node.store import FhirStore, SearchResult, WriteOutcome, migrate
"""

from node.store.fhir_store import FhirStore, HistoryEntry, WriteOutcome, migrate
from node.store.ingest import idempotent_transaction
from node.store.search_exec import SearchResult
from node.store.search_params import SUPPORTED_SEARCH_PARAMS, SearchParamDef

__all__ = [
    "FhirStore",
    "HistoryEntry",
    "SearchResult",
    "WriteOutcome",
    "migrate",
    "idempotent_transaction",
    "SUPPORTED_SEARCH_PARAMS",
    "SearchParamDef",
]
