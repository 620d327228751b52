"""Bulk Data ``$export`` jobs (FHIR Bulk Data Access 2.0, the async NDJSON pattern), without HTTP.

A job records, at kick-off, what the caller may read: for each exported type the compartment
its token gets for a *search* of that type (``Principal.compartment_for(type, "search")``) —
so an export returns exactly what the same token's searches return, page by page through
``FhirStore.search`` (the one search path; nothing here reads the tables itself). A
patient-context token exports its own compartment; a backend client only its scopes' types.

Jobs are JSON files under ``<data_dir>/exports/<job id>/`` (written atomically), their NDJSON
output beside them: a job survives a node restart. One worker (the feature's background task)
runs them; a job found ``in-progress`` at start-up was interrupted and is run again from the
start (its ``_lastUpdated`` bound is the kick-off time, so the output is the same), at most
``MAX_ATTEMPTS`` times, then reported failed.

A Group-level job also records the Group's Patient members at kick-off (``patients``): each type
is then read member by member — that member's compartment, and only where the token reaches it
(a patient-context token: its own compartment) — so a group export holds the members' data and
nothing else, through the same search path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["ExportJob", "ExportJobs", "run_export", "EXPORT_FORMATS", "MAX_ATTEMPTS"]

EXPORT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
MAX_ATTEMPTS = 3
_PAGE = 1000
_JOB_FILE = "job.json"


@dataclass
class ExportJob:
    id: str
    owner: str  # <role>:<subject> of the token that started it; only it may read the results
    level: str  # system | patient | group
    request: str  # the kick-off URL
    transaction_time: str  # kick-off instant: the export holds what was there then
    compartments: dict[str, str | None]  # type → compartment (None: every resource of the type)
    since: str | None = None
    status: str = "accepted"  # accepted | in-progress | completed | failed | cancelled
    attempts: int = 0
    error: str | None = None
    progress: str = ""
    output: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    patients: list[str] | None = None  # group level: the Group's Patient members at kick-off

    @classmethod
    def new(
        cls,
        owner: str,
        level: str,
        request: str,
        compartments: dict[str, str | None],
        since: str | None,
        patients: list[str] | None = None,
    ) -> ExportJob:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return cls(
            secrets.token_hex(16),
            owner,
            level,
            request,
            now,
            compartments,
            since,
            patients=patients,
        )


class ExportJobs:
    """The jobs of one node, as files under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def job_dir(self, job_id: str) -> Path:
        if not job_id.isalnum() or len(job_id) > 64:
            raise KeyError(job_id)
        return self.folder / job_id

    def save(self, job: ExportJob) -> None:
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_JOB_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(job)))
        os.replace(tmp, folder / _JOB_FILE)

    def load(self, job_id: str) -> ExportJob | None:
        try:
            path = self.job_dir(job_id) / _JOB_FILE
        except KeyError:
            return None
        if not path.is_file():
            return None
        return ExportJob(**json.loads(path.read_text()))

    def all(self) -> list[ExportJob]:
        if not self.folder.is_dir():
            return []
        jobs = [self.load(p.name) for p in sorted(self.folder.iterdir()) if p.is_dir()]
        return [j for j in jobs if j is not None]

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def output_file(self, job_id: str, rtype: str) -> Path:
        return self.job_dir(job_id) / f"{rtype}.ndjson"


def _scopes(compartment: str | None, patients: list[str] | None) -> list[str | None]:
    """The compartments one type is read in: the token's own (None: the whole type), or — for a
    group export — each member's compartment the token reaches."""
    if patients is None:
        return [compartment]
    return [p for p in patients if compartment is None or compartment == p]


def _pages(
    store: Any, rtype: str, bound: list[tuple[str, str]], compartment: str | None
) -> Iterator[list[dict[str, Any]]]:
    last = None
    while True:  # keyset pages in id order: each one an index range
        page = store.search(
            rtype,
            [*bound, ("_sort", "_id"), ("_count", str(_PAGE))],
            compartment_patient=compartment,
            after_id=last,
        )
        yield page.resources
        if len(page.resources) < _PAGE:
            return
        last = page.resources[-1]["id"]


def run_export(store: Any, jobs: ExportJobs, job: ExportJob) -> ExportJob:
    """Write the job's NDJSON files (one per type with data) through ``store.search`` with each
    type's compartment; the job ends ``completed`` (or ``cancelled`` if cancelled meanwhile)."""
    job.status, job.attempts, job.error, job.output = "in-progress", job.attempts + 1, None, []
    jobs.save(job)
    bound = [("_lastUpdated", f"le{job.transaction_time}")]
    if job.since:
        bound.append(("_lastUpdated", f"ge{job.since}"))
    for n, (rtype, compartment) in enumerate(sorted(job.compartments.items())):
        path = jobs.output_file(job.id, rtype)
        seen: set[str] = set()  # a resource in two members' compartments is written once
        with open(path, "w", encoding="utf-8") as out:
            for scope in _scopes(compartment, job.patients):
                for resources in _pages(store, rtype, bound, scope):
                    for resource in resources:
                        if resource["id"] in seen:
                            continue
                        seen.add(resource["id"])
                        out.write(json.dumps(resource, separators=(",", ":")) + "\n")
        if seen:
            job.output.append({"type": rtype, "count": len(seen)})
        else:
            path.unlink(missing_ok=True)
        job.progress = f"{n + 1} of {len(job.compartments)} types"
        current = jobs.load(job.id)
        if current is not None and current.status == "cancelled":
            return current
        jobs.save(job)
    job.status, job.finished_at = "completed", time.time()
    jobs.save(job)
    return job
