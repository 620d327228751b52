"""Server-side web sessions: the browser holds only a random id in an HttpOnly cookie; the
session (its CSRF token, language, signed-in user and access token, opaque handles) stays in the
serving process. Sessions end on sign-out, after ``idle_seconds`` without a request, and when the
access token they hold expires (the page layer checks the token on every request)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WebSession", "SessionStore"]


@dataclass
class WebSession:
    sid: str
    csrf: str
    lang: str
    last_seen: float
    # The signed-in user: whatever the service's pages need (e.g. the access token and role).
    user: dict[str, Any] | None = None
    # Short-lived state of a flow in progress (e.g. an OpenID Connect sign-in's PKCE verifier).
    pending: dict[str, Any] = field(default_factory=dict)
    # Opaque handle -> reference (e.g. "Patient/123") and back: URLs carry handles only.
    _handles: dict[str, str] = field(default_factory=dict)
    _refs: dict[str, str] = field(default_factory=dict)

    def handle_for(self, reference: str) -> str:
        """The opaque handle of ``reference`` in this session (made once, random)."""
        handle = self._refs.get(reference)
        if handle is None:
            handle = secrets.token_urlsafe(12)
            self._refs[reference] = handle
            self._handles[handle] = reference
        return handle

    def resolve(self, handle: str) -> str | None:
        """The reference behind a handle this session made, else None."""
        return self._handles.get(handle)


class SessionStore:
    """In-memory sessions of one process (a service's pages run in its single worker; with
    several workers a sticky load balancer is needed — see servicekit/README.md)."""

    def __init__(
        self,
        idle_seconds: float = 900.0,
        *,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def new(self, lang: str) -> WebSession:
        now = self._clock()
        session = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), lang, now)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= self.max_sessions:  # drop the least recently used
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                del self._sessions[oldest.sid]
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None) -> WebSession | None:
        """The live session of this id (its idle clock restarted), else None."""
        if not sid:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[sid]
                return None
            session.last_seen = now
            return session

    def rotate(self, session: WebSession) -> WebSession:
        """A new id and CSRF token for the same session (at sign-in: no session fixation)."""
        with self._lock:
            self._sessions.pop(session.sid, None)
            session.sid = secrets.token_urlsafe(32)
            session.csrf = secrets.token_urlsafe(32)
            session.last_seen = self._clock()
            self._sessions[session.sid] = session
        return session

    def end(self, session: WebSession) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)
        session.user = None

    def _expire(self, now: float) -> None:
        stale = [s for s, v in self._sessions.items() if now - v.last_seen > self.idle_seconds]
        for sid in stale:
            del self._sessions[sid]
