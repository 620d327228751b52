"""CSV lab / vital-sign feeds → one FHIR transaction Bundle per file (all rows or none).

Columns (header row required, names exact, order free; see README.md):

required  patient_identifier_system  URI of the patient's identifier system
          patient_identifier         the identifier value (the Patient must exist at the node)
          loinc                      LOINC code with its check digit, e.g. 2345-7
          value                      decimal number, e.g. 128 or 1.42
          unit                       UCUM code, e.g. mg/dL, mm[Hg], mL/min/{1.73_m2}
          effective_datetime         ISO 8601 date, or date-time with an offset
                                     (2025-03-14 or 2025-03-14T08:15:00+01:00)
optional  encounter_identifier_system, encounter_identifier   link to an existing Encounter
          status                     final (default) | preliminary | amended | corrected

Each row becomes an Observation referencing its Patient (and Encounter) by conditional reference
and carrying an identifier derived from (patient system, patient id, loinc, effective_datetime),
created with ``ifNoneExist`` — so loading the same file twice adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from node.feeds.terminology import (
    LOINC,
    LOINC_CODES,
    OBSERVATION_CATEGORY,
    UCUM,
    loinc_is_well_formed,
    observation_category,
)
from node.feeds.transaction_bundle import TransactionBuilder
from node.store.idempotency import token_value

__all__ = [
    "CSV_OBSERVATION_SYSTEM",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "CsvFeedError",
    "CsvProblem",
    "csv_text_to_bundle",
    "load_csv_file",
]

REQUIRED_COLUMNS = (
    "patient_identifier_system",
    "patient_identifier",
    "loinc",
    "value",
    "unit",
    "effective_datetime",
)
OPTIONAL_COLUMNS = ("encounter_identifier_system", "encounter_identifier", "status")
CSV_OBSERVATION_SYSTEM = "https://ipjms.example.org/fhir/sid/csv-observation"
STATUSES = ("final", "preliminary", "amended", "corrected")
MAX_REPORTED_PROBLEMS = 20

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d+)?|\.\d+)$")
_UCUM_CHARS = re.compile(r"^[!-~]+$")  # printable ASCII without spaces
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class CsvProblem:
    file: str
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: column {self.column!r}: {self.reason}"
            if self.column
            else f"{where}: {self.reason}"
        )


class CsvFeedError(ValueError):
    """The file is refused as a whole; ``problems`` name file, line and column of each fault."""

    def __init__(self, problems: list[CsvProblem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))


def _check_datetime(text: str) -> str | None:
    if _DATE.match(text):
        year, month, day = (text.split("-") + ["01", "01"])[:3]
        try:
            datetime(int(year), int(month), int(day))
        except ValueError:
            return f"{text!r} is not a valid date"
        return None
    if not _DATETIME.match(text):
        if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", text):
            return f"{text!r} has a time but no UTC offset (add Z or +hh:mm)"
        return f"{text!r} is not an ISO 8601 date or date-time"
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"{text!r} is not a valid date-time"
    return None


def _row_problems(row: dict[str, str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for column in REQUIRED_COLUMNS:
        if not row.get(column):
            problems.append((column, "is empty"))
    if problems:
        return problems
    system = row["patient_identifier_system"]
    if not _URI.match(system):
        problems.append(("patient_identifier_system", f"{system!r} is not an absolute URI"))
    enc_system, enc_value = (
        row.get("encounter_identifier_system", ""),
        row.get("encounter_identifier", ""),
    )
    if enc_system and not enc_value:
        problems.append(
            ("encounter_identifier", "is empty while encounter_identifier_system is set")
        )
    if enc_system and not _URI.match(enc_system):
        problems.append(("encounter_identifier_system", f"{enc_system!r} is not an absolute URI"))
    loinc = row["loinc"]
    if not loinc_is_well_formed(loinc):
        problems.append(("loinc", f"{loinc!r} is not a LOINC code with a valid check digit"))
    if not _DECIMAL.match(row["value"]):
        problems.append(("value", f"{row['value']!r} is not a decimal number"))
    unit = row["unit"]
    known = LOINC_CODES.get(loinc)
    if known and known.unit and unit != known.unit:
        problems.append(("unit", f"{unit!r} is not the UCUM unit for LOINC {loinc} ({known.unit})"))
    elif not _UCUM_CHARS.match(unit):
        problems.append(("unit", f"{unit!r} is not a UCUM code"))
    if known and not known.unit:
        problems.append(("loinc", f"{loinc} is a panel; send its components as separate rows"))
    if problem := _check_datetime(row["effective_datetime"]):
        problems.append(("effective_datetime", problem))
    status = row.get("status") or "final"
    if status not in STATUSES:
        problems.append(("status", f"{status!r} is not one of {', '.join(STATUSES)}"))
    return problems


def _row_key(row: dict[str, str]) -> str:
    parts = (
        row["patient_identifier_system"],
        row["patient_identifier"],
        row["loinc"],
        row["effective_datetime"],
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _observation(row: dict[str, str], key: str) -> dict[str, Any]:
    loinc = row["loinc"]
    coding: dict[str, Any] = {"system": LOINC, "code": loinc}
    if loinc in LOINC_CODES:
        coding["display"] = LOINC_CODES[loinc].display
    number = row["value"]
    patient = token_value(row["patient_identifier_system"], row["patient_identifier"])
    value: float | int = float(number) if "." in number else int(number)
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": CSV_OBSERVATION_SYSTEM, "value": key}],
        "status": row.get("status") or "final",
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": observation_category(loinc)}]}
        ],
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient?identifier={patient}"},
        "effectiveDateTime": row["effective_datetime"],
        "valueQuantity": {"value": value, "unit": row["unit"], "system": UCUM, "code": row["unit"]},
    }
    if enc_value := row.get("encounter_identifier"):
        enc_system = row.get("encounter_identifier_system", "")
        criteria = (
            token_value(enc_system, enc_value) if enc_system else quote(enc_value, safe=":/.-_~")
        )
        observation["encounter"] = {"reference": f"Encounter?identifier={criteria}"}
    return observation


def csv_text_to_bundle(text: str, *, source: str = "<csv>") -> dict[str, Any]:
    """Pure: CSV text → transaction Bundle. Raises CsvFeedError naming every bad line/column."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    problems: list[CsvProblem] = []
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise CsvFeedError([CsvProblem(source, 1, None, f"unreadable CSV header: {exc}")]) from exc
    if not header:
        raise CsvFeedError(
            [CsvProblem(source, 1, None, "the file is empty (a header row is required)")]
        )
    for column in header:
        if column not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            problems.append(CsvProblem(source, 1, column, "unknown column"))
    for column in REQUIRED_COLUMNS:
        if column not in header:
            problems.append(CsvProblem(source, 1, column, "required column is missing"))
    if problems:
        raise CsvFeedError(problems)
    reader.fieldnames = header
    builder = TransactionBuilder(f"csv/{source}")
    first_line_of: dict[str, int] = {}
    try:
        for raw in reader:
            line = reader.line_num
            if None in raw:
                problems.append(CsvProblem(source, line, None, "more fields than header columns"))
                continue
            row = {k: (v or "").strip() for k, v in raw.items()}
            if not any(row.values()):
                continue
            bad = _row_problems(row)
            problems += [CsvProblem(source, line, column, reason) for column, reason in bad]
            if bad:
                continue
            key = _row_key(row)
            if key in first_line_of:
                problems.append(
                    CsvProblem(
                        source,
                        line,
                        None,
                        f"duplicates line {first_line_of[key]} (same patient, loinc and time)",
                    )
                )
                continue
            first_line_of[key] = line
            builder.create(
                key,
                _observation(row, key),
                identifier=(CSV_OBSERVATION_SYSTEM, key),
            )
    except csv.Error as exc:
        problems.append(CsvProblem(source, reader.line_num, None, f"malformed CSV: {exc}"))
    if problems:
        raise CsvFeedError(problems)
    if not len(builder):
        raise CsvFeedError([CsvProblem(source, 1, None, "the file has no data rows")])
    return builder.bundle()


def load_csv_file(path: Path) -> dict[str, Any]:
    """Read one CSV feed file (UTF-8) and convert it. The caller submits the Bundle with
    ``store.transaction`` — atomic, so a file the store refuses leaves nothing behind."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CsvFeedError(
            [CsvProblem(path.name, 1, None, f"not UTF-8 text: {exc.reason}")]
        ) from exc
    return csv_text_to_bundle(text, source=path.name)
