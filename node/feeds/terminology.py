"""Code systems, codes and UCUM units the feeds emit — one table, used by every feed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATC",
    "CONDITIONS",
    "ICD10",
    "LOINC",
    "LOINC_CODES",
    "MEDICATIONS",
    "OBSERVATION_CATEGORY",
    "RXNORM",
    "SNOMED",
    "UCUM",
    "ConditionCode",
    "LoincCode",
    "loinc_is_well_formed",
    "MedicationCode",
    "observation_category",
]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass(frozen=True)
class LoincCode:
    code: str
    display: str
    unit: str  # UCUM code ("" for panels)
    category: str  # vital-signs | laboratory


LOINC_CODES: dict[str, LoincCode] = {
    c.code: c
    for c in (
        LoincCode("85354-9", "Blood pressure panel with all children optional", "", "vital-signs"),
        LoincCode("8480-6", "Systolic blood pressure", "mm[Hg]", "vital-signs"),
        LoincCode("8462-4", "Diastolic blood pressure", "mm[Hg]", "vital-signs"),
        LoincCode("8867-4", "Heart rate", "/min", "vital-signs"),
        LoincCode("29463-7", "Body weight", "kg", "vital-signs"),
        LoincCode(
            "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "vital-signs"
        ),
        LoincCode("2708-6", "Oxygen saturation in Arterial blood", "%", "vital-signs"),
        LoincCode("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "laboratory"),
        LoincCode("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "laboratory"),
        LoincCode("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "laboratory"),
        LoincCode("42637-9", "Natriuretic peptide B [Mass/volume] in Blood", "pg/mL", "laboratory"),
        LoincCode(
            "33762-6",
            "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma",
            "pg/mL",
            "laboratory",
        ),
        LoincCode("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "laboratory"),
        LoincCode(
            "33914-3",
            "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma"
            " by Creatinine-based formula (MDRD)",
            "mL/min/{1.73_m2}",
            "laboratory",
        ),
        LoincCode(
            "62238-1",
            "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma"
            " or Blood by Creatinine-based formula (CKD-EPI)",
            "mL/min/{1.73_m2}",
            "laboratory",
        ),
        LoincCode("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "laboratory"),
        LoincCode("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "laboratory"),
        LoincCode("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "laboratory"),
    )
}


def observation_category(loinc_code: str) -> str:
    """vital-signs for the known vital-sign codes, laboratory otherwise."""
    known = LOINC_CODES.get(loinc_code)
    return known.category if known else "laboratory"


@dataclass(frozen=True)
class ConditionCode:
    key: str
    snomed: str
    snomed_display: str
    icd10: str
    icd10_display: str


CONDITIONS: dict[str, ConditionCode] = {
    c.key: c
    for c in (
        ConditionCode(
            "hypertension",
            "38341003",
            "Hypertensive disorder, systemic arterial (disorder)",
            "I10",
            "Essential (primary) hypertension",
        ),
        ConditionCode(
            "diabetes",
            "44054006",
            "Diabetes mellitus type 2 (disorder)",
            "E11.9",
            "Type 2 diabetes mellitus without complications",
        ),
        ConditionCode(
            "copd",
            "13645005",
            "Chronic obstructive lung disease (disorder)",
            "J44.9",
            "Chronic obstructive pulmonary disease, unspecified",
        ),
        ConditionCode(
            "heart_failure",
            "84114007",
            "Heart failure (disorder)",
            "I50.9",
            "Heart failure, unspecified",
        ),
        ConditionCode(
            "ckd",
            "709044004",
            "Chronic kidney disease (disorder)",
            "N18.9",
            "Chronic kidney disease, unspecified",
        ),
    )
}


@dataclass(frozen=True)
class MedicationCode:
    key: str
    rxnorm: str  # RxNorm ingredient (IN) concept
    display: str
    atc: str
    dose_text: str


MEDICATIONS: dict[str, MedicationCode] = {
    m.key: m
    for m in (
        MedicationCode("lisinopril", "29046", "lisinopril", "C09AA03", "10 mg orally once daily"),
        MedicationCode("amlodipine", "17767", "amlodipine", "C08CA01", "5 mg orally once daily"),
        MedicationCode("metformin", "6809", "metformin", "A10BA02", "500 mg orally twice daily"),
        MedicationCode("furosemide", "4603", "furosemide", "C03CA01", "40 mg orally once daily"),
        MedicationCode("bisoprolol", "19484", "bisoprolol", "C07AB07", "5 mg orally once daily"),
        MedicationCode(
            "tiotropium", "69120", "tiotropium", "R03BB04", "18 micrograms inhaled once daily"
        ),
        MedicationCode(
            "atorvastatin", "83367", "atorvastatin", "C10AA05", "20 mg orally once daily"
        ),
    )
}


def loinc_is_well_formed(code: str) -> bool:
    """``NNNNN-C`` with the LOINC mod-10 check digit C."""
    body, _, check = code.partition("-")
    if not (body.isdigit() and check.isdigit() and len(check) == 1 and 1 <= len(body) <= 7):
        return False
    reversed_digits = body[::-1]
    odd = reversed_digits[0::2][::-1]
    even = reversed_digits[1::2][::-1]
    total = sum(int(c) for c in even + str(int(odd) * 2))
    return str((10 - total % 10) % 10) == check
