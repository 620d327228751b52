"""Which identifier of a Patient is the national one, and the patient's regional pseudonym."""

from __future__ import annotations

from typing import Any

from trust.pseudonym import IdentifierError, check_gb11643, pseudonym

__all__ = [
    "NATIONAL_ID_SYSTEM",
    "NATIONAL_ID_SYSTEMS",
    "CN_RESIDENT_ID_SYSTEM",
    "national_identifier",
    "patient_pseudonym",
]

# The region's own national identifier system (used by seeded patients), then the ones real
# exports carry (Synthea writes US social security numbers).
NATIONAL_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/national-id"
# A PRC resident identity number (GB 11643-1999): its check digit is validated before it is
# pseudonymised, so a mistyped number never links to (or creates) another person.
CN_RESIDENT_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/cn-resident-id"
NATIONAL_ID_SYSTEMS = (NATIONAL_ID_SYSTEM, CN_RESIDENT_ID_SYSTEM, "http://hl7.org/fhir/sid/us-ssn")
_VALIDATORS = {CN_RESIDENT_ID_SYSTEM: check_gb11643}


def national_identifier(patient: dict[str, Any]) -> str | None:
    """The patient's national identifier value, by system preference, or None."""
    by_system = {
        ident.get("system"): ident.get("value")
        for ident in patient.get("identifier", [])
        if ident.get("value")
    }
    for system in NATIONAL_ID_SYSTEMS:
        if by_system.get(system):
            value = str(by_system[system])
            check = _VALIDATORS.get(system)
            return check(value) if check is not None else value
    return None


def patient_pseudonym(
    patient: dict[str, Any], linkage_key: bytes, *, strict: bool = False
) -> str | None:
    """The patient's pseudonym, or None without a (valid) national identifier. ``strict``:
    an identifier that fails its check digit raises :class:`IdentifierError` (clear message)
    instead of counting as none."""
    try:
        value = national_identifier(patient)
    except IdentifierError:
        if strict:
            raise
        return None
    return pseudonym(linkage_key, value) if value else None
