"""Which identifier of a Patient is the national one, and the patient's regional pseudonym."""

from __future__ import annotations

from typing import Any

from trust.pseudonym import pseudonym

__all__ = ["NATIONAL_ID_SYSTEM", "NATIONAL_ID_SYSTEMS", "national_identifier", "patient_pseudonym"]

# The region's own national identifier system (used by seeded patients), then the ones real
# exports carry (Synthea writes US social security numbers).
NATIONAL_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/national-id"
NATIONAL_ID_SYSTEMS = (NATIONAL_ID_SYSTEM, "http://hl7.org/fhir/sid/us-ssn")


def national_identifier(patient: dict[str, Any]) -> str | None:
    """The patient's national identifier value, by system preference, or None."""
    by_system = {
        ident.get("system"): ident.get("value")
        for ident in patient.get("identifier", [])
        if ident.get("value")
    }
    for system in NATIONAL_ID_SYSTEMS:
        if by_system.get(system):
            return str(by_system[system])
    return None


def patient_pseudonym(patient: dict[str, Any], linkage_key: bytes) -> str | None:
    value = national_identifier(patient)
    return pseudonym(linkage_key, value) if value else None
