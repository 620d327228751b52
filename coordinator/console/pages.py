"""The authority console's pages: sign-in (an analyst account), the network (organisations,
online or not, queue depths, recent refusals — the same figures as ``GET /status``, from the
same function) and the model registry (every model with its card, and whether it may raise
alerts: published, and its card's federated AUROC and outcome events against the region's default
alerting floor, ``protos.alerting_floor`` — the rule each node's gate applies with its own,
possibly stricter, floor) and the regional quality indicators (the federated analytics runs'
results, read from the authority's SuperLink data folder when the coordinator is given it:
``console_federated_dir``); the training runs, and a form that starts one (``ipjms fl run`` in the
background, coordinator/console/fl_runs.py) when the coordinator is also given the authority's
credentials and the registry URL. Every page needs a signed-in analyst; the form its CSRF token."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from coordinator.console.analysts import AnalystAccounts
from coordinator.console.fl_runs import (
    MAX_EPSILON,
    RunLauncher,
    RunRequestError,
    node_budgets,
    parse_run_request,
)
from coordinator.console.indicator_results import read_results, trends
from protos.alerting_floor import REGION_FLOOR, assess
from servicekit.outcome import Unauthorized
from servicekit.web import WebKit, page_route_class, static_router

__all__ = ["install_console", "PREFIX"]

log = logging.getLogger("ipjms.coordinator.console")

PREFIX = "/console"
HERE = Path(__file__).parent
router = APIRouter(route_class=page_route_class("console"), include_in_schema=False)


def _kit(request: Request) -> WebKit:
    return request.app.state.console  # type: ignore[no-any-return]


def _analyst(request: Request) -> str:
    user = _kit(request).session(request).user
    if not user or user.get("role") != "analyst":
        raise Unauthorized("sign in")
    return str(user["subject"])


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    return _kit(request).render(
        request, template, status=status, app_title="Regional health authority", **context
    )


@router.get(PREFIX)
@router.get(PREFIX + "/")
async def start(request: Request) -> Response:
    user = _kit(request).session(request).user
    return _kit(request).redirect(PREFIX + ("/network" if user else "/sign-in"))


@router.get(PREFIX + "/sign-in")
async def sign_in_page(request: Request) -> Response:
    return _render(request, "sign_in.html", patient_sign_in=None)


@router.post(PREFIX + "/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    accounts: AnalystAccounts = request.app.state.analysts
    if not await run_in_threadpool(accounts.verify, username, password):
        return _render(request, "sign_in.html", status=401, failed=True, patient_sign_in=None)
    _kit(request).sign_in(request, {"role": "analyst", "subject": username, "display": username})
    return _kit(request).redirect(PREFIX + "/network")


@router.post(PREFIX + "/sign-out")
async def sign_out(request: Request) -> Response:
    _kit(request).sign_out(request)
    return _kit(request).redirect(PREFIX + "/sign-in")


@router.post(PREFIX + "/language")
async def language(request: Request) -> Response:
    form = await request.form()
    target = str(form.get("next", ""))
    if not target.startswith(PREFIX) or "//" in target:
        target = PREFIX + "/"
    response = _kit(request).redirect(target)
    _kit(request).set_language(request, response, str(form.get("lang", "")))
    return response


@router.get(PREFIX + "/network")
async def network(request: Request) -> Response:
    _analyst(request)
    status = await run_in_threadpool(request.app.state.network_status)
    return _render(request, "network.html", net=status)


@router.get(PREFIX + "/models")
async def models(request: Request) -> Response:
    _analyst(request)
    from coordinator.model_registry.store import ModelStore

    store = ModelStore(request.app.state.services.directory.engine)
    rows = await run_in_threadpool(
        lambda: [(m.summary(), m.card, assess(m.card, REGION_FLOOR)) for m in store.list()]
    )
    return _render(request, "models.html", models=rows, floor=REGION_FLOOR)


@router.get(PREFIX + "/indicators")
async def indicators(request: Request) -> Response:
    _analyst(request)
    folder: Path | None = request.app.state.console_federated_dir
    docs = await run_in_threadpool(read_results, folder) if folder is not None else []
    return _render(
        request, "indicators.html", configured=folder is not None, tables=trends(docs), runs=docs
    )


def _runs_page(request: Request, status: int = 200, **context: Any) -> Response:
    launcher: RunLauncher = request.app.state.fl_runs
    listed = launcher.list_runs()
    return _render(
        request,
        "runs.html",
        status=status,
        configured=launcher.configured,
        runs=listed,
        budgets=node_budgets(listed),
        max_epsilon=MAX_EPSILON,
        **context,
    )


@router.get(PREFIX + "/runs")
async def runs(request: Request) -> Response:
    _analyst(request)
    return await run_in_threadpool(lambda: _runs_page(request))


@router.post(PREFIX + "/runs")
async def start_run(request: Request) -> Response:
    analyst = _analyst(request)
    launcher: RunLauncher = request.app.state.fl_runs
    form = await request.form()
    epsilon, rounds = str(form.get("epsilon", "")), str(form.get("rounds", ""))
    try:
        wanted = parse_run_request(epsilon, rounds)
    except RunRequestError as exc:
        message = str(exc)
        return await run_in_threadpool(
            lambda: _runs_page(request, 400, error=message, epsilon=epsilon, rounds=rounds)
        )
    if not launcher.configured:
        return await run_in_threadpool(
            lambda: _runs_page(request, 409, error="starting runs is not configured")
        )
    try:
        label = await run_in_threadpool(launcher.start, wanted)
    except RuntimeError as exc:
        busy = str(exc)
        return await run_in_threadpool(lambda: _runs_page(request, 409, error=busy))
    log.info(
        "console started a federated run",
        extra={"run": label, "analyst": analyst, "epsilon": wanted.epsilon},
    )
    return _kit(request).redirect(PREFIX + "/runs")


def install_console(
    app: FastAPI,
    data_dir: Path,
    idle_seconds: float = 900.0,
    federated_dir: Path | None = None,
    authority_dir: Path | None = None,
    registry_url: str | None = None,
) -> None:
    """Mount the console on the coordinator's HTTP app (``app.state.network_status`` must be
    the function ``/status`` answers with); ``federated_dir``: the authority's SuperLink data
    folder (the indicators page reads its ``runs/*.json``)."""
    app.state.console = WebKit(
        prefix=PREFIX,
        template_dirs=[HERE / "templates"],
        locale_dirs=[HERE / "locale"],
        idle_seconds=idle_seconds,
        cookie_name="ipjms_session_console",
    )
    app.state.console.env.filters["datetime_utc"] = lambda t: datetime.fromtimestamp(float(t), UTC)
    # A model card as readable JSON in a <pre>: autoescaped text, so quotes and CJK need no
    # \uXXXX escapes (tojson's are for a value placed inside a <script>, which these are not).
    app.state.console.env.filters["card_json"] = lambda v: json.dumps(
        v, indent=2, ensure_ascii=False, sort_keys=True
    )
    app.state.analysts = AnalystAccounts(data_dir)
    app.state.console_federated_dir = federated_dir
    app.state.fl_runs = RunLauncher(
        federated_dir, authority_dir, registry_url, log_dir=data_dir / "console-runs"
    )
    app.include_router(router)
    app.include_router(static_router(PREFIX))
