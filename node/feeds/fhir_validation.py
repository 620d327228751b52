"""Check feed output against the FHIR R4 models of ``fhir.resources.R4B``.

The store validates everything it writes (one place); feeds use this in their tests and to fail
early with the entry that is wrong.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class

__all__ = ["InvalidFeedResource", "validate_bundle"]


class InvalidFeedResource(ValueError):
    """A resource a feed produced does not validate as FHIR R4."""


def validate_bundle(bundle: dict[str, Any]) -> int:
    """Validate the Bundle and every entry's resource; returns the number of resources checked."""
    checked = 0
    for index, entry in enumerate(bundle.get("entry", [])):
        resource = entry["resource"]
        rtype = resource.get("resourceType", "?")
        try:
            get_fhir_model_class(rtype).model_validate(resource)
        except Exception as exc:
            raise InvalidFeedResource(f"entry {index} ({rtype}): {exc}") from exc
        checked += 1
    get_fhir_model_class("Bundle").model_validate(bundle)
    return checked
