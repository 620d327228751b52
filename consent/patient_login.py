"""A patient's password check, the one place both sign-in routes use (``/auth/patient-token``
and the OpenID Connect ``/oidc/authorize``): throttle and lock-out per account
(``trust.login_throttle``), argon2 off the event loop, every failure an AuditEvent."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from consent.accounts import PatientAccounts
from servicekit.outcome import Unauthorized
from trust import audit_events
from trust.login_throttle import AccountLocked, LoginThrottle

__all__ = ["check_patient_password"]


async def check_patient_password(request: Request, username: str, password: str) -> str:
    """The pseudonym of the patient whose user name and password match; 401 otherwise, 429
    while the account is locked (checked before the password, so a locked account costs no
    hash and tells a guesser nothing)."""
    username, password = username[:128], password[:256]
    throttle: LoginThrottle = request.app.state.login_throttle
    accounts: PatientAccounts = request.app.state.accounts
    try:
        await run_in_threadpool(throttle.check, username)
    except AccountLocked:
        _audit(request, username, "account locked")
        raise
    try:
        # argon2 takes ~0.2 CPU-s: off the event loop, so a login never stalls a $decide
        pseudonym = await run_in_threadpool(accounts.authenticate, username, password)
    except Unauthorized:
        await run_in_threadpool(throttle.failed, username)
        _audit(request, username, "bad credentials")
        raise
    await run_in_threadpool(throttle.succeeded, username)
    return pseudonym


def _audit(request: Request, username: str, reason: str) -> None:
    event = audit_events.login_failure(
        username=username,
        observer=request.app.state.org_id,
        reason=reason,
        source_address=request.client.host if request.client else None,
    )
    request.app.state.ledger.append(event)
