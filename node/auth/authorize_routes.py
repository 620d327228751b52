"""SMART App Launch over HTTP: discovery documents and the sign-in pages of the
authorization-code flow. The rules are in :mod:`node.auth.authorization`; this module only
renders and reads forms.

- ``GET /fhir/.well-known/smart-configuration`` (and ``/.well-known/smart-configuration``),
  ``GET /.well-known/jwks.json`` (the node's token-signing key, to verify ``id_token``\\ s);
- ``GET /auth/authorize``: checks the request, shows the sign-in form (the request travels as
  hidden fields and is checked again on submit);
- ``POST /auth/authorize``: checks the password; a practitioner who asked for ``launch/patient``
  gets the patient picker (carrying a 5-minute signed login ticket instead of the password);
  in an EHR launch (``launch=`` + the ``launch`` scope) the sign-in consumes the launch context
  instead (node/auth/ehr_launch.py) and its patient is the token's; then ``303`` to the app's
  redirect URI with ``code`` and ``state``;
- ``POST /auth/launch`` (a practitioner's bearer token; JSON ``{"patient", "client_id"}``): the
  EHR opens a launch context for the patient in view → ``201 {"launch", "iss", "expires_in"}``.

Errors before the app and its redirect URI are known good are shown on the page (400), never
sent to an unchecked URI; later ones go back to the app as ``error=…&state=…``.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from node.auth.authorization import (
    AuthorizeError,
    AuthorizeRequest,
    launch_grant,
    needs_patient_pick,
    parse_authorize_request,
)
from node.auth.deps import authenticate
from node.auth.discovery import smart_configuration
from node.auth.ehr_launch import LAUNCH_TTL, LaunchContext
from node.auth.login_text import pick_locale, text
from node.auth.oauth_errors import OAuthError
from node.auth.principal import Principal
from node.auth.roles import ROLE_SCOPES
from node.auth.service import AuthService, LoginFailure
from servicekit.openapi_bodies import form_body, json_body
from servicekit.outcome import BadRequest, Forbidden
from trust.login_throttle import AccountLocked
from trust.tokens import TokenError, TokenIssuer, TokenVerifier

__all__ = ["router", "public_base_url", "open_launch"]

router = APIRouter(tags=["auth"])
_MAX_FORM_BYTES = 16 * 1024
_TICKET_TTL = 300
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_S = {"type": "string"}
_LOGIN_FORM = form_body({"username": _S, "password": _S, "client_id": _S, "ticket": _S}, ())


def public_base_url(request: Request) -> str:
    """The node's base URL: its configured public URL, else as this client reached it."""
    settings = request.app.state.settings
    if settings.public_url:
        return str(settings.base_url)
    return str(request.base_url).rstrip("/")


def _fhir_bases(request: Request) -> set[str]:
    return {request.app.state.settings.fhir_base_url, f"{public_base_url(request)}/fhir"}


@router.get("/.well-known/smart-configuration")
@router.get("/fhir/.well-known/smart-configuration")
def smart_config(request: Request) -> JSONResponse:
    """SMART App Launch discovery (public)."""
    return JSONResponse(smart_configuration(public_base_url(request)))


@router.get("/.well-known/jwks.json")
def jwks(request: Request) -> JSONResponse:
    """The node's token-signing public key (verifies its id_tokens and access tokens)."""
    auth: AuthService = request.app.state.auth
    return JSONResponse({"keys": [auth.key.public_jwk()]})


def _page(title: str, body: str, status: int = 200, locale: str = "en") -> HTMLResponse:
    doc = (
        f"<!doctype html><html lang='{locale}'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:32em;"
        "margin:3em auto;padding:0 1em}label{display:block;margin:.6em 0}"
        "input[type=text],input[type=password]{width:100%;padding:.4em}"
        ".error{color:#a00}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_PAGE_HEADERS)


def _hidden(fields: dict[str, str]) -> str:
    return "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in fields.items()
    )


def _login_page(
    req: AuthorizeRequest, error_key: str = "", status: int = 200, **values: object
) -> HTMLResponse:
    """The sign-in form in the request's language (``error_key``: a login_text entry)."""
    lang = pick_locale(req.ui_locales)

    def t(key: str, **kw: object) -> str:
        return html.escape(text(lang, key, **kw))

    error = t(error_key, **values) if error_key else ""
    problem = f"<p class='error' role='alert'>{error}</p>" if error else ""
    scopes = "".join(f"<li>{html.escape(s)}</li>" for s in req.scopes)
    asks = t("asks_for", app=req.app.name)
    return _page(
        text(lang, "sign_in"),
        f"<p>{asks}</p><ul>{scopes}</ul>"
        f"{problem}<form method='post' action='/auth/authorize'>{_hidden(req.as_form())}"
        f"<label>{t('username')} <input type='text' name='username' autocomplete='username' "
        f"required></label><label>{t('password')} <input type='password' name='password' "
        "autocomplete='current-password' required></label>"
        f"<button type='submit'>{t('submit')}</button></form>",
        status,
        lang,
    )


def _error_page(description: str, req: AuthorizeRequest | None = None) -> HTMLResponse:
    lang = pick_locale(req.ui_locales if req else None)
    return _page(
        text(lang, "cannot"), f"<p class='error'>{html.escape(description)}</p>", 400, lang
    )


def _redirect(uri: str, params: dict[str, str]) -> RedirectResponse:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return RedirectResponse(
        urlunsplit(parts._replace(query=query)),
        status_code=303,
        headers={"Cache-Control": "no-store"},
    )


def _authorize_error(exc: AuthorizeError, params: dict[str, str]) -> Response:
    if not exc.redirect:
        return _error_page(exc.description)
    answer = {"error": exc.error, "error_description": exc.description}
    if params.get("state"):
        answer["state"] = params["state"]
    return _redirect(params.get("redirect_uri") or "", answer)


@router.get("/auth/authorize")
def authorize_page(request: Request) -> Response:
    """Start of the authorization-code flow: the sign-in form (or an error)."""
    params = {k: v for k, v in request.query_params.items()}
    auth: AuthService = request.app.state.auth
    try:
        req = parse_authorize_request(params, auth.apps, _fhir_bases(request), auth.launches)
    except AuthorizeError as exc:
        if exc.redirect:  # redirect_uri was checked; use the registered form of it
            app = auth.apps.get_app(params.get("client_id", ""))
            if app is not None and not params.get("redirect_uri"):
                params["redirect_uri"] = app.redirect_uris[0]
        return _authorize_error(exc, params)
    return _login_page(req)


def _request_digest(req: AuthorizeRequest) -> str:
    return hashlib.sha256(json.dumps(req.as_form(), sort_keys=True).encode()).hexdigest()


def _ticket_issuer(auth: AuthService) -> tuple[TokenIssuer, TokenVerifier, str]:
    audience = f"{auth.settings.token_issuer}:login-ticket"
    issuer = TokenIssuer(auth.settings.token_issuer, auth.key, _TICKET_TTL)
    verifier = TokenVerifier(
        auth.settings.token_issuer, audience, {auth.key.kid: auth.key.public_key}
    )
    return issuer, verifier, audience


def _picker_page(
    request: Request, req: AuthorizeRequest, ticket: str, name: str = "", error: str = ""
) -> HTMLResponse:
    store = request.app.state.store
    query = [("_count", "50")]
    if name:
        query.append(("name", name))
    try:
        patients = store.search("Patient", query).resources
    except Exception:  # a bad name filter: show the unfiltered list
        patients = store.search("Patient", [("_count", "50")]).resources
    rows = []
    for p in patients:
        names = p.get("name") or [{}]
        label = " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip()
        born = p.get("birthDate", "")
        rows.append(
            f"<label><input type='radio' name='patient' value='{html.escape(p['id'])}' required> "
            f"{html.escape(label or p['id'])} {html.escape(born)}</label>"
        )
    lang = pick_locale(req.ui_locales)

    def t(key: str) -> str:
        return html.escape(text(lang, key))

    problem = f"<p class='error' role='alert'>{t(error)}</p>" if error else ""
    hidden = _hidden({**req.as_form(), "ticket": ticket})
    return _page(
        text(lang, "choose"),
        f"{problem}<form method='post' action='/auth/authorize'>{hidden}"
        f"<label>{t('find_by_name')} <input type='text' name='name' "
        f"value='{html.escape(name)}'></label>"
        f"<button type='submit' name='find' value='1'>{t('find')}</button></form>"
        f"<form method='post' action='/auth/authorize'>{hidden}"
        f"{''.join(rows) or '<p>' + t('none') + '</p>'}"
        f"<button type='submit'>{t('open')}</button></form>",
        locale=lang,
    )


async def _read_form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if ctype != "application/x-www-form-urlencoded" or len(body) > _MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "expected a small url-encoded form")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "form is not valid UTF-8") from None
    return {k: v[0] for k, v in parsed.items()}


@router.post("/auth/authorize", openapi_extra=_LOGIN_FORM)
async def authorize_submit(request: Request) -> Response:
    """The sign-in form (or the patient picker) submitted."""
    try:
        form = await _read_form(request)
    except OAuthError as exc:
        return _error_page(exc.diagnostics)
    auth: AuthService = request.app.state.auth
    try:
        req = await run_in_threadpool(
            parse_authorize_request, form, auth.apps, _fhir_bases(request), auth.launches
        )
    except AuthorizeError as exc:
        return _authorize_error(exc, form)
    issuer, verifier, audience = _ticket_issuer(auth)
    picked = None
    if form.get("ticket"):
        try:
            claims = verifier.verify(form["ticket"])
        except TokenError:
            return _login_page(req, "expired", 401)
        if claims.get("req") != _request_digest(req):
            return _error_page("the sign-in ticket belongs to another request", req)
        account = auth.accounts.get_user(str(claims["sub"]))
        if account is None or not account.active:
            return _login_page(req, "inactive", 401)
        if form.get("find") or not form.get("patient"):
            return _picker_page(request, req, form["ticket"], form.get("name", "").strip())
        picked = form["patient"]
        try:
            await run_in_threadpool(request.app.state.store.read, "Patient", picked)
        except Exception:
            return _picker_page(request, req, form["ticket"], error="no_patient")
    else:
        username, password = form.get("username", ""), form.get("password", "")
        try:
            account = await run_in_threadpool(auth.accounts.authenticate, username, password)
        except AccountLocked as locked:
            auth.record_failure(LoginFailure("authorization_code", "locked"))
            return _login_page(req, "locked", 429, seconds=locked.retry_after)
        if account is None:
            known = auth.accounts.get_user(username) if username else None
            auth.record_failure(
                LoginFailure(
                    "authorization_code",
                    "inactive" if known and not known.active else "bad_credentials",
                    known.username if known else None,
                )
            )
            return _login_page(req, "invalid", 401)
        if req.launch:  # EHR launch: the patient the practitioner had in view (used once)
            try:
                context = await run_in_threadpool(
                    auth.launches.consume, req.launch, req.app.client_id, account.username
                )
            except OAuthError as exc:
                return _redirect(
                    req.redirect_uri,
                    {"error": exc.error, "error_description": exc.diagnostics, "state": req.state},
                )
            picked = context.patient
        elif needs_patient_pick(req, account):
            ticket = issuer.issue(
                account.username, audience, ttl=_TICKET_TTL, claims={"req": _request_digest(req)}
            )
            return _picker_page(request, req, ticket)
    try:
        grant = launch_grant(req, account, ROLE_SCOPES[account.role], picked_patient=picked)
    except OAuthError as exc:
        return _redirect(
            req.redirect_uri,
            {"error": exc.error, "error_description": exc.diagnostics, "state": req.state},
        )
    code = await run_in_threadpool(auth.codes.issue, req, grant)
    return _redirect(req.redirect_uri, {"code": code, "state": req.state})


_LAUNCH_BODY = json_body({"patient": _S, "client_id": _S}, ("patient", "client_id"))


def require_practitioner(principal: Principal) -> None:
    """Only a practitioner who may read every patient opens an EHR launch (Forbidden)."""
    if principal.role in ("patient", "system") or principal.compartment_for("Patient", "read"):
        raise Forbidden("an EHR launch is opened by a practitioner who may read the patient")


def open_launch(request: Request, principal: Principal, patient: str, client_id: str) -> str:
    """The EHR side of an EHR launch: a launch-context handle for ``patient`` (in view of the
    practitioner ``principal``) and the app ``client_id``. Shared by ``POST /auth/launch`` and
    the doctor pages. Raises Forbidden / BadRequest / NotFound."""
    require_practitioner(principal)
    auth: AuthService = request.app.state.auth
    app = auth.apps.get_app(client_id)
    if app is None or not app.active or "launch" not in app.scopes:
        raise BadRequest(f"client_id {client_id!r} is not a registered app allowed EHR launch")
    if not _FHIR_ID.fullmatch(patient):
        raise BadRequest(f"{patient!r} is not a valid Patient id")
    request.app.state.store.read("Patient", patient)  # 404 / 410 if not there
    return auth.launches.issue(LaunchContext(client_id, principal.subject, patient))


@router.post("/auth/launch", openapi_extra=_LAUNCH_BODY)
async def launch_context(request: Request) -> JSONResponse:
    """Open an EHR launch context (a practitioner's token); errors are OperationOutcomes."""
    principal = authenticate(request)
    require_practitioner(principal)
    body = await request.body()
    try:
        data = json.loads(body) if len(body) <= _MAX_FORM_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("patient", "client_id")
    ):
        raise BadRequest("expected a small JSON object with string patient and client_id")
    handle = await run_in_threadpool(
        open_launch, request, principal, data["patient"], data["client_id"]
    )
    return JSONResponse(
        {"launch": handle, "iss": f"{public_base_url(request)}/fhir", "expires_in": LAUNCH_TTL},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )
