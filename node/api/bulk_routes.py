"""Bulk Data ``$export`` over HTTP (the async pattern of FHIR Bulk Data Access 2.0):

- kick-off: ``GET /fhir/$export`` (system level) or ``GET /fhir/Patient/$export`` (every
  patient's compartment types), with ``Prefer: respond-async``; ``_type``, ``_since``,
  ``_outputFormat`` (NDJSON only); any other parameter → 400. Answers ``202`` and
  ``Content-Location`` (the status URL). ``GET /fhir/Group/{id}/$export`` (group level): the
  compartment types of the Group's Patient members (``Group.member.entity``, inactive members
  left out) — the token must read the Group (a patient-context token: only a Group whose only
  member is its own patient; one holding others is 403), each member's data as that token's
  searches return it; an unknown Group is 404;
- status: ``GET /fhir/$export-status/{job}`` → ``202`` + ``X-Progress`` while running, ``200``
  with the manifest when done, ``500`` with an OperationOutcome if the job failed;
  ``DELETE`` cancels it and removes its files;
- files: ``GET /fhir/$export-file/{job}/{Type}.ndjson`` (``requiresAccessToken``: the bearer
  token of the same caller).

Only the caller that started a job (same role and subject) sees it; anyone else gets 404.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from node.api.access import check_type_name, ensure_in_compartment, refuse_other_patients
from node.api.body import fhir_response
from node.api.bulk_export import EXPORT_FORMATS, MAX_ATTEMPTS, ExportJob, ExportJobs, run_export
from node.api.fhir_instance import fhir_base
from node.api.negotiation import CONTROL_PARAMS
from node.api.shaping import parse_prefer
from node.auth.deps import authenticate
from node.auth.principal import Principal
from node.feature import run_while_open
from node.store.search_params import SHARED_TYPES, SUPPORTED_SEARCH_PARAMS
from servicekit.outcome import BadRequest, FhirError, Forbidden, NotFound, operation_outcome

__all__ = ["router", "export_jobs", "run_export_jobs", "group_members"]

router = APIRouter(tags=["fhir"])
_KICKOFF_PARAMS = CONTROL_PARAMS | {"_type", "_since", "_outputFormat"}
_POLL_SECONDS = 0.5
# The runner reads the jobs when the exports folder changed (a kick-off, in any worker process,
# makes a job folder in it), and at least this often whatever it looks like.
_RESCAN_SECONDS = 10.0


def export_jobs(app: Any) -> ExportJobs:
    return ExportJobs(app.state.settings.data_dir / "exports")


def _compartments(principal: Principal, types: list[str]) -> dict[str, str | None]:
    """For each type the token may search: the compartment its searches get (as a search)."""
    out: dict[str, str | None] = {}
    for rtype in types:
        try:
            out[rtype] = principal.compartment_for(rtype, "search")
        except Forbidden:
            continue
    return out


def group_members(group: dict[str, Any]) -> list[str]:
    """The ids of a Group's active Patient members, in order, once each (pure)."""
    members: list[str] = []
    for member in group.get("member") or []:
        reference = str((member.get("entity") or {}).get("reference") or "")
        rtype, _, rid = reference.rpartition("/")
        if member.get("inactive") or not rtype.endswith("Patient") or not rid:
            continue
        if rid not in members:
            members.append(rid)
    return members


def _group_patients(request: Request, principal: Principal, gid: str) -> list[str]:
    """The Group's Patient members, if this token may export them all (else 403/404)."""
    check_type_name("Group", gid)
    store = request.app.state.store
    compartment = principal.compartment_for("Group", "read")
    ensure_in_compartment(store, "Group", gid, compartment)
    members = group_members(store.read("Group", gid))
    if compartment is not None and any(m != compartment for m in members):
        raise Forbidden(f"Group/{gid} holds other patients: a patient token exports only its own")
    return members


def _kickoff(
    request: Request, principal: Principal, level: str, patients: list[str] | None = None
) -> Response:
    params = list(request.query_params.multi_items())
    if principal.patient_id:  # a patient-context token naming someone else: 403 first
        refuse_other_patients("Patient", params, principal.patient_id)
    if not parse_prefer(request.headers.get("prefer")).respond_async:
        raise BadRequest("$export is asynchronous: send Prefer: respond-async")
    unknown = sorted({k for k, _ in params if k not in _KICKOFF_PARAMS})
    if unknown:
        raise BadRequest(
            f"$export does not support parameter(s) {', '.join(unknown)}; supported: "
            "_type, _since, _outputFormat"
        )
    values = dict(params)
    fmt = values.get("_outputFormat")
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise BadRequest(f"_outputFormat {fmt!r} is not supported; use application/fhir+ndjson")
    available = sorted(SUPPORTED_SEARCH_PARAMS)
    if level in ("patient", "group"):
        available = [t for t in available if t not in SHARED_TYPES]
    types = available
    if values.get("_type"):
        types = [t.strip() for t in values["_type"].split(",") if t.strip()]
        wrong = [t for t in types if t not in available]
        if wrong:
            raise BadRequest(f"_type: {', '.join(wrong)} cannot be exported at this level")
    since = values.get("_since")
    if since:
        try:
            from datetime import datetime

            datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"_since {since!r} is not an instant") from None
    compartments = _compartments(principal, types)
    if not compartments:
        raise Forbidden("the token may read none of the types this export asks for")
    if values.get("_type") and len(compartments) < len(types):
        refused = sorted(set(types) - set(compartments))
        raise Forbidden(f"the token may not read {', '.join(refused)}")
    job = ExportJob.new(principal.writer, level, str(request.url), compartments, since, patients)
    export_jobs(request.app).save(job)
    status_url = f"{fhir_base(request)}/$export-status/{job.id}"
    return Response(status_code=202, headers={"Content-Location": status_url})


@router.get("/fhir/$export")
def export_system(request: Request, principal: Principal = Depends(authenticate)) -> Response:
    return _kickoff(request, principal, "system")


@router.get("/fhir/Patient/$export")
def export_patients(request: Request, principal: Principal = Depends(authenticate)) -> Response:
    return _kickoff(request, principal, "patient")


@router.get("/fhir/Group/{gid}/$export")
def export_group(
    gid: str, request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    return _kickoff(request, principal, "group", _group_patients(request, principal, gid))


def _own_job(request: Request, principal: Principal, job_id: str) -> ExportJob:
    job = export_jobs(request.app).load(job_id)
    if job is None or job.owner != principal.writer:
        raise NotFound(f"no export job {job_id}")
    return job


class ExportFailed(FhirError):
    status, code = 500, "exception"


@router.get("/fhir/$export-status/{job_id}")
def export_status(
    job_id: str, request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    job = _own_job(request, principal, job_id)
    if job.status in ("accepted", "in-progress"):
        return Response(
            status_code=202,
            headers={"X-Progress": job.progress or job.status, "Retry-After": "1"},
        )
    if job.status == "failed":
        raise ExportFailed(f"export {job.id} failed: {job.error}")
    if job.status == "cancelled":
        raise NotFound(f"export {job.id} was cancelled")
    base = fhir_base(request)
    manifest = {
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": True,
        "output": [
            {**o, "url": f"{base}/$export-file/{job.id}/{o['type']}.ndjson"} for o in job.output
        ],
        "error": [],
    }
    return fhir_response(manifest, 200, {"Expires": "0"})


@router.delete("/fhir/$export-status/{job_id}")
def export_cancel(
    job_id: str, request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    job = _own_job(request, principal, job_id)
    jobs = export_jobs(request.app)
    if job.status in ("accepted", "in-progress"):
        job.status = "cancelled"
        jobs.save(job)
    else:
        jobs.remove(job.id)
    return fhir_response(
        operation_outcome(
            f"export {job.id} cancelled", code="informational", severity="information"
        ),
        202,
    )


@router.get("/fhir/$export-file/{job_id}/{filename}")
def export_file(
    job_id: str, filename: str, request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    job = _own_job(request, principal, job_id)
    rtype = filename.removesuffix(".ndjson")
    if job.status != "completed" or rtype not in {o["type"] for o in job.output}:
        raise NotFound(f"export {job.id} has no file {filename}")
    path = export_jobs(request.app).output_file(job.id, rtype)
    return FileResponse(path, media_type="application/fhir+ndjson")


def _next_job(jobs: ExportJobs) -> ExportJob | None:
    for job in sorted(jobs.all(), key=lambda j: j.transaction_time):
        if job.status == "in-progress" and job.attempts >= MAX_ATTEMPTS:
            job.status = "failed"
            job.error = f"interrupted {job.attempts} times (node restarts); start a new export"
            jobs.save(job)
        elif job.status in ("accepted", "in-progress"):
            return job
    return None


@asynccontextmanager
async def run_export_jobs(services: Any, app: Any) -> AsyncIterator[None]:
    """Background task (one worker): run accepted jobs, and re-run interrupted ones."""
    jobs = export_jobs(app)

    def folder_version() -> int | None:
        try:
            return jobs.folder.stat().st_mtime_ns
        except OSError:
            return None

    async def loop() -> None:
        while True:
            version, scanned = folder_version(), time.monotonic()
            job = await run_in_threadpool(_next_job, jobs)
            if job is None:
                # Idle: nothing to run until a kick-off adds a job folder (a stat of the
                # folder, not a read of every job, each _POLL_SECONDS).
                while True:
                    await asyncio.sleep(_POLL_SECONDS)
                    if folder_version() != version:
                        break
                    if time.monotonic() - scanned >= _RESCAN_SECONDS:
                        break
                continue
            try:
                await run_in_threadpool(run_export, services.store, jobs, job)
            except Exception as exc:  # a job that cannot run fails; the runner goes on
                job.status, job.error = "failed", type(exc).__name__
                jobs.save(job)

    async with run_while_open(loop()):
        yield
