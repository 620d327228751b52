"""The FHIR REST API as a node feature: system (transaction/batch, metadata), operations
($validate, $lastn, Bulk Data $export with its job runner), type search and instance routes.
The store it serves is one of the node's services (its schema is migrated by the composition
root before any feature's)."""

from __future__ import annotations

from node.api import bulk_routes, fhir_instance, fhir_operations, fhir_search, fhir_system
from node.feature import BackgroundTask, Feature

__all__ = ["FHIR_API"]

FHIR_API = Feature(
    name="fhir-api",
    # operations before search and instance routes: /fhir/$export is not a type, nor
    # /fhir/Observation/$lastn Observation/{id}
    routers=(
        fhir_system.router,
        bulk_routes.router,
        fhir_operations.router,
        fhir_search.router,
        fhir_instance.router,
    ),
    background=(BackgroundTask("bulk-export", bulk_routes.run_export_jobs),),
)
