"""One service's pages: templates, sessions, CSRF, security headers and error pages.

A service builds one :class:`WebKit` (kept on ``app.state.<name>``) and declares its page routes on
an ``APIRouter(route_class=page_route_class(name))``. Every page route then, in one place:

- refuses a state-changing request without the session's CSRF token (403, nothing done);
- answers the service's errors (``servicekit.outcome.FhirError``: 401/403/404/…) as an HTML
  page with the same status, never a stack trace;
- sends the security headers (CSP without inline script, no framing, no referrer, no caching)
  and the session cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` under TLS).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import (
    ChainableUndefined,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    select_autoescape,
)

from servicekit.outcome import FhirError, NotFound
from servicekit.web.csrf import CSRF_FIELD, CSRF_HEADER, SAFE_METHODS, CsrfRefused, check_csrf
from servicekit.web.i18n import DEFAULT_LANGUAGE, LANGUAGES, Translator, pick_language
from servicekit.web.sessions import SessionStore, WebSession

__all__ = [
    "WebKit",
    "page_route_class",
    "static_router",
    "CSP",
    "csp_allowing_forms_to",
    "STATIC_DIR",
    "SECURITY_HEADERS",
]

log = logging.getLogger("ipjms.web")

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


def csp_allowing_forms_to(origins: Iterable[str]) -> str:
    """The CSP with ``form-action`` widened to these origins (``scheme://host[:port]``, checked
    by the caller): a form whose answer redirects the browser there (an EHR launch)."""
    extra = " ".join(sorted(set(origins)))
    return CSP.replace(
        "form-action 'self'", f"form-action 'self' {extra}" if extra else "form-action 'self'"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class WebKit:
    """Templates, sessions and page plumbing of one service's web pages under ``prefix``."""

    def __init__(
        self,
        *,
        prefix: str,
        template_dirs: Iterable[Path] = (),
        locale_dirs: Iterable[Path] = (),
        idle_seconds: float = 900.0,
        cookie_name: str = "ipjms_session",
        sign_in_path: str | None = None,
        globals: dict[str, Any] | None = None,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.cookie_name = cookie_name
        self.sign_in_path = sign_in_path or f"{self.prefix}/sign-in"
        self.sessions = SessionStore(idle_seconds)
        self.translator = Translator(locale_dirs)
        loaders = [FileSystemLoader(str(d)) for d in (*template_dirs, TEMPLATES_DIR)]
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=ChainableUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(globals or {})

    # -- sessions -------------------------------------------------------------------------------
    def session(self, request: Request) -> WebSession:
        """This request's session; a new anonymous one if it has none (or it expired)."""
        existing = getattr(request.state, "web_session", None)
        if existing is not None:
            return existing  # type: ignore[no-any-return]
        session = self.sessions.get(request.cookies.get(self.cookie_name))
        if session is None:
            lang = pick_language(request.cookies.get("ipjms_lang") or DEFAULT_LANGUAGE)
            session = self.sessions.new(lang)
        request.state.web_session = session
        return session

    def sign_in(self, request: Request, user: dict[str, Any]) -> WebSession:
        """Attach ``user`` to the session under a fresh id and CSRF token."""
        session = self.sessions.rotate(self.session(request))
        session.user = user
        return session

    def sign_out(self, request: Request) -> None:
        self.sessions.end(self.session(request))

    # -- pages ----------------------------------------------------------------------------------
    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        session = self.session(request)
        lang = session.lang
        translations = self.translator.translations(lang)
        html = self.env.get_template(template).render(
            request=request,
            session=session,
            user=session.user,
            lang=lang,
            languages=LANGUAGES,
            csrf=session.csrf,
            csrf_field=CSRF_FIELD,
            prefix=self.prefix,
            _=translations.gettext,
            fmt_dt=lambda v, f="medium": self.translator.datetime(lang, v, f),
            fmt_num=lambda v: self.translator.number(lang, v),
            handle=session.handle_for,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def error_page(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(
            request, "error.html", status=status, status_code=status, message=message
        )

    def finish(self, request: Request, response: Response) -> Response:
        """Security headers and the session cookie on every page response."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        session = getattr(request.state, "web_session", None)
        if session is not None and request.cookies.get(self.cookie_name) != session.sid:
            response.set_cookie(
                self.cookie_name,
                session.sid,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        return response

    def set_language(self, request: Request, response: Response, lang: str) -> None:
        session = self.session(request)
        session.lang = pick_language(lang)
        response.set_cookie(
            "ipjms_lang",
            session.lang,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
            max_age=365 * 86400,
        )

    async def check_csrf(self, request: Request) -> None:
        if request.method in SAFE_METHODS:
            return
        session = self.session(request)
        header = request.headers.get(CSRF_HEADER)
        field = None
        if header is None:
            ctype = request.headers.get("content-type", "")
            if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
                value = (await request.form()).get(CSRF_FIELD)
                field = value if isinstance(value, str) else None
        check_csrf(request.method, session.csrf, header, field)


def static_router(prefix: str, static_dirs: Iterable[Path] = ()) -> APIRouter:
    """``GET {prefix}/static/{path}``: the app's own and the vendored static files (no listing;
    only files directly inside the static folders)."""
    router = APIRouter(include_in_schema=False)
    folders = [d.resolve() for d in (*static_dirs, STATIC_DIR, STATIC_DIR / "vendor")]
    kinds = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}

    @router.get(prefix.rstrip("/") + "/static/{path}")
    def static(path: str) -> Response:
        for folder in folders:
            candidate = (folder / path).resolve()
            if candidate.is_relative_to(folder) and candidate.is_file():
                response = FileResponse(
                    candidate, media_type=kinds.get(candidate.suffix, "text/plain")
                )
                for name, value in SECURITY_HEADERS.items():
                    response.headers[name] = value
                response.headers["Cache-Control"] = "no-cache"
                return response
        raise NotFound("no such file")

    return router


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def page_route_class(state_name: str) -> type[APIRoute]:
    """An APIRoute class for page routes whose WebKit is ``app.state.<state_name>``."""

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            original = super().get_route_handler()

            async def handler(request: Request) -> Response:
                kit: WebKit = getattr(request.app.state, state_name)
                try:
                    await kit.check_csrf(request)
                    response = await original(request)
                except CsrfRefused:
                    log.info("web request refused: no CSRF token", extra={"path": self.path})
                    response = kit.error_page(request, 403, "csrf")
                except FhirError as exc:
                    if exc.status == 401:
                        response = kit.redirect(kit.sign_in_path)
                    else:
                        response = kit.error_page(request, exc.status, str(exc))
                except RequestValidationError:
                    response = kit.error_page(request, 400, "invalid request")
                return kit.finish(request, response)

            return handler

    return PageRoute
