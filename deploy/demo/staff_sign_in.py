"""Sign a member of staff in to a node's web pages as a browser does: the pages' start link →
the node's own login page (SMART authorization code + PKCE) → the pages' callback. Used by the
demo, ``bench/web_pages.py`` and the tests (any ``httpx.Client``, a ``TestClient`` too)."""

from __future__ import annotations

import html
import re

import httpx

__all__ = ["sign_in_staff", "login_form"]

_HIDDEN = re.compile(r"<input type='hidden' name='([^']*)' value='([^']*)'>")


def login_form(page: str) -> dict[str, str]:
    """The hidden fields of the node's login page (the checked authorize request)."""
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}


def sign_in_staff(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """The callback's answer (303 to the pages when signed in). ``client`` must not follow
    redirects by itself; each step's status is checked (RuntimeError naming the step)."""
    start = client.get("/app/sign-in/node", follow_redirects=False)
    if start.status_code != 303:
        raise RuntimeError(f"the sign-in start answered {start.status_code}")
    login = client.get(start.headers["location"], follow_redirects=False)
    if login.status_code != 200:
        raise RuntimeError(f"the node's login page answered {login.status_code}: {login.text}")
    form = {**login_form(login.text), "username": username, "password": password}
    sent = client.post("/auth/authorize", data=form, follow_redirects=False)
    if sent.status_code != 303:
        raise RuntimeError(f"the node's login answered {sent.status_code}")
    return client.get(sent.headers["location"], follow_redirects=False)
