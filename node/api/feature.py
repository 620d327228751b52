"""The FHIR REST API as a node feature: system (transaction/batch, metadata), operations
($validate, $lastn), type search and instance routes. The store it serves is one of the node's
services (its schema is migrated by the composition root before any feature's)."""

from __future__ import annotations

from node.api import fhir_instance, fhir_operations, fhir_search, fhir_system
from node.feature import Feature

__all__ = ["FHIR_API"]

FHIR_API = Feature(
    name="fhir-api",
    # operations before the instance routes: /fhir/Observation/$lastn is not Observation/{id}
    routers=(fhir_system.router, fhir_operations.router, fhir_search.router, fhir_instance.router),
)
