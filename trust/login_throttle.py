"""Failed-login throttling and lock-out per account, kept in a service's own database.

After ``free_failures`` consecutive failures for one account, the account is locked for
``base_lockout`` seconds; each further failure doubles the lock (up to ``max_lockout``). While
locked, a login attempt is refused with 429 and a ``Retry-After`` *before* the password is
checked, so a guesser learns nothing and spends no hash. A success resets the count.

Accounts are keyed by the SHA-256 of the normalised user name, so an unknown user name is
throttled exactly like a known one (the answer does not reveal which names exist) and the table
holds no user names. Rows live in the service's database (table from :func:`throttle_table`),
so every worker process and a restart see the same count; the increment is one ``UPDATE``
statement, so concurrent failures are all counted (SQLite and PostgreSQL alike).

Policy source: NIST SP 800-63B §5.2.2 (rate limiting: at most 100 consecutive failed attempts
per account; lockouts that grow) — our defaults are far stricter (5 free, then 60 s doubling to
1 h), which also bounds how long an attacker can keep a real patient out.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from servicekit.outcome import FhirError

__all__ = ["ThrottlePolicy", "LoginThrottle", "AccountLocked", "throttle_table", "account_key"]


class AccountLocked(FhirError):
    """429: too many failed logins for this account; try again after ``retry_after`` s."""

    status, code = 429, "throttled"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            f"too many failed logins for this account; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = seconds


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5
    base_lockout: float = 60.0
    max_lockout: float = 3600.0

    def lockout_after(self, failures: int) -> float:
        """Seconds the account is locked after its ``failures``-th consecutive failure (pure)."""
        if failures < self.free_failures:
            return 0.0
        return float(
            min(self.base_lockout * 2 ** (failures - self.free_failures), self.max_lockout)
        )


def throttle_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("account_key", String(64), primary_key=True),
        Column("failures", Integer, nullable=False),
        Column("locked_until", Float, nullable=False),
    )


def account_key(username: str) -> str:
    return hashlib.sha256(username.strip().casefold().encode()).hexdigest()


class LoginThrottle:
    def __init__(self, engine: Engine, table: Table, policy: ThrottlePolicy | None = None) -> None:
        self.engine = engine
        self.table = table
        self.policy = policy or ThrottlePolicy()

    def check(self, username: str, *, now: float | None = None) -> None:
        """Raise :class:`AccountLocked` while the account is locked."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            row = conn.execute(
                select(self.table.c.locked_until).where(
                    self.table.c.account_key == account_key(username)
                )
            ).first()
        if row is not None and row.locked_until > now:
            raise AccountLocked(row.locked_until - now)

    def failed(self, username: str, *, now: float | None = None) -> int:
        """Count one failure; lock when the policy says so. Returns the consecutive count."""
        now = time.time() if now is None else now
        key, t = account_key(username), self.table
        for _ in range(3):
            with self.engine.begin() as conn:
                bumped = conn.execute(
                    update(t).where(t.c.account_key == key).values(failures=t.c.failures + 1)
                )
                if bumped.rowcount == 0:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(t).values(account_key=key, failures=1, locked_until=0.0)
                            )
                    except IntegrityError:
                        continue  # another worker inserted it first: bump that row
                failures = int(
                    conn.execute(select(t.c.failures).where(t.c.account_key == key)).scalar_one()
                )
                lock = self.policy.lockout_after(failures)
                if lock:
                    conn.execute(
                        update(t).where(t.c.account_key == key).values(locked_until=now + lock)
                    )
                return failures
        raise RuntimeError("could not record a login failure")  # pragma: no cover

    def succeeded(self, username: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(self.table)
                .where(self.table.c.account_key == account_key(username))
                .values(failures=0, locked_until=0.0)
            )
