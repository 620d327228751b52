"""The pages' shared layer: server-rendered HTML (Jinja2 + vendored htmx and uPlot), server-side
sessions behind an HttpOnly cookie, CSRF tokens, security headers (a CSP without inline script),
Babel translations (zh-CN default, en) and opaque per-session handles instead of identifiers in
URLs. Imports nothing of ours; each service's pages (``node/portal``, ``coordinator/console``)
build on it and decide access through their own service's one access seam."""

from servicekit.web.csrf import CsrfRefused, check_csrf
from servicekit.web.i18n import LANGUAGES, Translator
from servicekit.web.kit import WebKit, page_route_class, static_router
from servicekit.web.sessions import SessionStore, WebSession

__all__ = [
    "LANGUAGES",
    "CsrfRefused",
    "SessionStore",
    "Translator",
    "WebKit",
    "WebSession",
    "check_csrf",
    "page_route_class",
    "static_router",
]
