"""Apply ingest work to a store and tally what happened, file by file.

A file that fails is reported by name with the store's reason and the rest continue. Each unit is
one ``FhirStore.ingest_bundle`` call: atomic (a Bundle file is stored whole or not at all; an
NDJSON file chunk by chunk) and idempotent by the store's ingest rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.ingest.sources import IngestFileError, WorkUnit, discover, read_units
from servicekit.outcome import FhirError

__all__ = ["FileResult", "IngestReport", "ingest_files", "apply_unit", "unit_writer", "IngestStore"]


class IngestStore(Protocol):
    def ingest_bundle(self, bundle: dict[str, Any], *, writer: str) -> dict[str, Any]: ...
    def transaction(self, bundle: dict[str, Any], *, writer: str) -> dict[str, Any]: ...


@dataclass
class FileResult:
    path: Path
    created: Counter[str] = field(default_factory=Counter)
    existing: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok]

    def totals(self) -> tuple[Counter[str], Counter[str]]:
        created: Counter[str] = Counter()
        existing: Counter[str] = Counter()
        for f in self.files:
            created.update(f.created)
            existing.update(f.existing)
        return created, existing


def _location_type(location: str) -> str:
    parts = location.split("?")[0].strip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else "?"


def _tally(response: dict[str, Any], result: FileResult, label: str) -> None:
    for index, entry in enumerate(response.get("entry") or []):
        resp = entry.get("response") or {}
        status = str(resp.get("status", ""))
        code = status.split(" ", 1)[0]
        if code.startswith("201"):
            result.created[_location_type(str(resp.get("location", "")))] += 1
        elif code.startswith("200"):
            result.existing[_location_type(str(resp.get("location", "")))] += 1
        else:
            issues = (resp.get("outcome") or {}).get("issue") or [{}]
            reason = issues[0].get("diagnostics", status or "failed")
            result.errors.append(f"{label} entry {index}: {reason}")


def unit_writer(unit: WorkUnit) -> str:
    """The writer of a unit's commit events: ``feed:csv/<file>`` for a CSV feed file,
    ``ingest:<file>`` for FHIR files (the file's name, not its folder)."""
    if unit.path.suffix == ".csv":
        return f"feed:csv/{unit.path.name}"
    return f"ingest:{unit.path.name}"


def apply_unit(store: IngestStore, unit: WorkUnit, result: FileResult) -> None:
    """Apply one unit; a store error becomes an entry of ``result.errors`` (never raised)."""
    writer = unit_writer(unit)
    try:
        if unit.apply == "transaction":
            _tally(store.transaction(unit.bundle, writer=writer), result, unit.label)
        else:
            _tally(store.ingest_bundle(unit.bundle, writer=writer), result, unit.label)
    except FhirError as exc:
        result.errors.append(f"{unit.label}: {exc.diagnostics}")


def ingest_files(
    store: IngestStore,
    paths: Sequence[Path],
    *,
    on_file: Callable[[Path, int], None] | None = None,
    on_done: Callable[[FileResult], None] | None = None,
) -> IngestReport:
    """Ingest every file under ``paths`` in dependency order. ``on_file(path, n_resources)``
    is called before a file is applied, ``on_done(result)`` after it (progress display)."""
    report = IngestReport()
    for path in discover(paths):
        result = FileResult(path)
        report.files.append(result)
        try:
            units = read_units(path)
        except IngestFileError as exc:
            result.errors.append(str(exc))
            units = []
        if on_file:
            on_file(path, sum(u.resources for u in units))
        for unit in units:
            apply_unit(store, unit, result)
        if on_done:
            on_done(result)
    return report
