"""EHR launch contexts (SMART App Launch 2, "EHR launch"), without HTTP.

The EHR — a practitioner viewing a patient's record (the doctor pages, or any client holding a
practitioner's token: ``POST /auth/launch``) — asks for a launch context: the patient in view,
for one registered app. It gets an opaque handle, the ``launch`` value it passes to the app's
launch URL together with ``iss`` (the FHIR base). The app sends the handle back as the
``launch`` parameter of its authorize request, with the ``launch`` scope; the token response
then carries ``patient`` from the context.

A handle is 32 random bytes; only its SHA-256 is stored, bound to the app and to the
practitioner who opened it (the person who signs in at ``/auth/authorize`` must be that
practitioner). It lives ``LAUNCH_TTL`` seconds and is used once: the sign-in consumes it, and
an unknown, expired, replayed or foreign handle is an OAuth2 ``invalid_request``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update

from node.auth.oauth_errors import OAuthError
from node.auth.tables import launch_contexts

__all__ = ["LaunchContext", "LaunchContexts", "LAUNCH_TTL"]

LAUNCH_TTL = 300  # seconds: the practitioner clicks, the app starts and signs in at once


@dataclass(frozen=True)
class LaunchContext:
    client_id: str
    subject: str  # the practitioner's user name
    patient: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class LaunchContexts:
    """Launch contexts by hash, in the node database (any worker may see the app's request)."""

    def __init__(
        self, engine: Engine, ttl: int = LAUNCH_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine, self.ttl, self.clock = engine, ttl, clock

    def issue(self, context: LaunchContext) -> str:
        handle = secrets.token_urlsafe(32)
        now = self.clock()
        t = launch_contexts
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.expires_at < now - 3600))
            conn.execute(
                insert(t).values(
                    handle_sha256=_sha256(handle),
                    client_id=context.client_id,
                    subject=context.subject,
                    patient_id=context.patient,
                    expires_at=now + self.ttl,
                    used_at=None,
                )
            )
        return handle

    def peek(self, handle: str, client_id: str) -> LaunchContext:
        """The context of a live, unused handle for this app (else OAuthError)."""
        t = launch_contexts
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.handle_sha256 == _sha256(handle))).first()
        if row is None or row.client_id != client_id:
            raise OAuthError("invalid_request", "launch is unknown (for this app)")
        if row.used_at is not None:
            raise OAuthError("invalid_request", "launch was already used")
        if row.expires_at < self.clock():
            raise OAuthError("invalid_request", "launch has expired")
        return LaunchContext(row.client_id, row.subject, row.patient_id)

    def consume(self, handle: str, client_id: str, subject: str) -> LaunchContext:
        """Use the handle once, signed in as ``subject`` (the practitioner who opened it)."""
        context = self.peek(handle, client_id)
        if context.subject != subject:
            raise OAuthError("invalid_request", "this launch was opened by another user")
        t = launch_contexts
        with self.engine.begin() as conn:
            marked = conn.execute(
                update(t)
                .where(
                    t.c.handle_sha256 == _sha256(handle),
                    t.c.used_at.is_(None),
                    t.c.expires_at >= self.clock(),
                )
                .values(used_at=self.clock())
            ).rowcount
        if marked != 1:
            raise OAuthError("invalid_request", "launch was already used or has expired")
        return context
