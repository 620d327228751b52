"""Which identifier of a Patient is the national one, and the patient's regional pseudonym."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trust.pseudonym import IdentifierError, check_gb11643

if TYPE_CHECKING:
    from trust.pseudonymiser import Pseudonymiser

__all__ = [
    "NATIONAL_ID_SYSTEM",
    "NATIONAL_ID_SYSTEMS",
    "CN_RESIDENT_ID_SYSTEM",
    "national_identifier",
    "national_identifier_with_system",
    "patient_pseudonym",
    "patient_pseudonyms",
    "patient_candidates",
]

# The region's own national identifier system (used by seeded patients), then the ones real
# exports carry (Synthea writes US social security numbers).
NATIONAL_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/national-id"
# A PRC resident identity number (GB 11643-1999): its check digit is validated before it is
# pseudonymised, so a mistyped number never links to (or creates) another person.
CN_RESIDENT_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/cn-resident-id"
NATIONAL_ID_SYSTEMS = (NATIONAL_ID_SYSTEM, CN_RESIDENT_ID_SYSTEM, "http://hl7.org/fhir/sid/us-ssn")
_VALIDATORS = {CN_RESIDENT_ID_SYSTEM: check_gb11643}


def national_identifier_with_system(patient: dict[str, Any]) -> tuple[str, str] | None:
    """The patient's national identifier as (system, value), by system preference, or None.
    A system with a check digit (GB 11643) is validated and normalised here: a wrong one
    raises :class:`IdentifierError` (its message never quotes the number)."""
    by_system = {
        ident.get("system"): ident.get("value")
        for ident in patient.get("identifier", [])
        if ident.get("value")
    }
    for system in NATIONAL_ID_SYSTEMS:
        if by_system.get(system):
            value = str(by_system[system])
            check = _VALIDATORS.get(system)
            return system, (check(value) if check is not None else value)
    return None


def national_identifier(patient: dict[str, Any]) -> str | None:
    """The patient's national identifier value, by system preference, or None."""
    found = national_identifier_with_system(patient)
    return found[1] if found else None


def _identifier(patient: dict[str, Any], strict: bool) -> tuple[str, str] | None:
    try:
        return national_identifier_with_system(patient)
    except IdentifierError:
        if strict:
            raise
        return None


def patient_pseudonym(
    patient: dict[str, Any], pseudonymiser: Pseudonymiser, *, strict: bool = False
) -> str | None:
    """The patient's regional pseudonym, or None without a (valid) national identifier.
    ``strict``: an identifier that fails its check digit raises :class:`IdentifierError`
    (clear message) instead of counting as none."""
    found = _identifier(patient, strict)
    return pseudonymiser.regional([found])[0] if found else None


def patient_pseudonyms(
    patients: Sequence[dict[str, Any]], pseudonymiser: Pseudonymiser
) -> list[str | None]:
    """Pseudonyms of many patients in one call to the source (None where there is no valid
    national identifier)."""
    found = [_identifier(p, False) for p in patients]
    asked = pseudonymiser.regional([f for f in found if f is not None])
    answers = iter(asked)
    return [next(answers) if f is not None else None for f in found]


def patient_candidates(patient: dict[str, Any], pseudonymiser: Pseudonymiser) -> list[str]:
    """The patient's regional pseudonym under every key version the authority still holds,
    the current one first (``OprfPseudonymiser.candidates``: this node's own evaluations of the
    national identifier it holds, each paid once and kept); [] without a (valid) national
    identifier. What the node offers the consent registry, which decides under the one the
    patient is known by (issue 23: consents recorded before a key rotation)."""
    found = _identifier(patient, False)
    return pseudonymiser.candidates(found) if found is not None else []
