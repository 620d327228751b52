"""What ``ipjms node ingest`` reads: finding files, ordering them, turning each into store work.

Pure file handling, no database. Supported inputs:

- a FHIR JSON ``transaction``, ``batch`` or ``collection`` Bundle (Synthea exports);
- a ``document`` Bundle (e.g. an IPS) → stored whole as one Bundle resource;
- a single resource;
- NDJSON (FHIR Bulk Data, ``*.ndjson``) → one resource per line, in chunks of ``NDJSON_CHUNK``;
- CSV lab / vital-sign feeds (``*.csv``, columns in node/feeds/README.md) → one transaction.

FHIR units are handed to ``FhirStore.ingest_bundle``, which applies the store's idempotency rule
(PUT to the source id, else conditional create on an identifier); CSV files become the feed's own
idempotent transaction (conditional creates) — so ingesting twice adds nothing.

Order: organisation/practitioner files (Synthea's ``hospitalInformation*`` and
``practitionerInformation*``, Bulk Data ``Organization``/``Practitioner``/``Location`` files)
first, then patients, then everything else — so references resolve.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["IngestFileError", "WorkUnit", "discover", "read_units", "NDJSON_CHUNK"]

NDJSON_CHUNK = 500
_SUFFIXES = (".json", ".ndjson", ".jsonl", ".csv")
_SHARED_PREFIXES = ("hospitalinformation", "practitionerinformation")
_SHARED_TYPES = ("Organization", "Location", "Practitioner", "PractitionerRole", "Medication")


class IngestFileError(Exception):
    """A file cannot be ingested; the message names the file and the problem."""


@dataclass(frozen=True)
class WorkUnit:
    """One store call: a Bundle, where it came from, and how to apply it."""

    path: Path
    label: str  # file name, or "file.ndjson lines 1-500"
    bundle: dict[str, Any]
    resources: int
    # "ingest": FhirStore.ingest_bundle (the store's idempotency rule); "transaction": the Bundle
    # is already idempotent (feed-built) and goes to FhirStore.transaction as it is.
    apply: Literal["ingest", "transaction"] = "ingest"


def _priority(path: Path) -> tuple[int, str]:
    name = path.name.lower()
    if path.suffix == ".csv":  # observations about patients that must already be there
        return (3, name)
    if name.startswith(_SHARED_PREFIXES):
        return (0, name)
    stem = path.name.split(".", 1)[0]
    if path.suffix in (".ndjson", ".jsonl"):
        if stem in _SHARED_TYPES:
            return (0, name)
        if stem == "Patient":
            return (1, name)
    return (2, name)


def discover(paths: Sequence[Path]) -> list[Path]:
    """All ingestible files under ``paths`` (folders recursively), in ingest order."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise IngestFileError(f"{path}: no such file or folder")
        if path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in _SUFFIXES
            )
        else:
            files.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return sorted(unique, key=_priority)


def _collection(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def _json_units(path: Path, data: Any) -> Iterator[WorkUnit]:
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise IngestFileError(f"{path.name}: not a FHIR resource (no resourceType)")
    if data["resourceType"] != "Bundle":
        yield WorkUnit(path, path.name, _collection([data]), 1)
        return
    kind = data.get("type")
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise IngestFileError(f"{path.name}: Bundle.entry is not a list")
    if kind == "document":
        yield WorkUnit(path, path.name, data, 1)
    elif kind in ("transaction", "batch", "collection"):
        yield WorkUnit(path, path.name, data, len(entries))
    else:
        raise IngestFileError(
            f"{path.name}: Bundle type {kind!r} cannot be ingested "
            "(transaction, batch, collection or document)"
        )


def _ndjson_units(path: Path, text: str) -> Iterator[WorkUnit]:
    chunk: list[dict[str, Any]] = []
    first_line = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestFileError(f"{path.name} line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise IngestFileError(f"{path.name} line {number}: not a FHIR resource")
        if not chunk:
            first_line = number
        chunk.append(resource)
        if len(chunk) >= NDJSON_CHUNK:
            label = f"{path.name} lines {first_line}-{number}"
            yield WorkUnit(path, label, _collection(chunk), len(chunk))
            chunk = []
    if chunk:
        yield WorkUnit(path, f"{path.name} lines {first_line}-", _collection(chunk), len(chunk))


def _csv_unit(path: Path, text: str) -> WorkUnit:
    from node.feeds.csv_feed import CsvFeedError, csv_text_to_bundle

    try:
        bundle = csv_text_to_bundle(text, source=path.name)
    except CsvFeedError as exc:
        raise IngestFileError(f"{path.name}: {exc}") from None
    return WorkUnit(path, path.name, bundle, len(bundle["entry"]), apply="transaction")


def read_units(path: Path) -> list[WorkUnit]:
    """The store work for one file (whole file parsed first: a broken file does nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestFileError(f"{path.name}: cannot read ({exc})") from None
    if path.suffix in (".ndjson", ".jsonl"):
        return list(_ndjson_units(path, text))
    if path.suffix == ".csv":
        return [_csv_unit(path, text)]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestFileError(
            f"{path.name}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        ) from None
    return list(_json_units(path, data))
