"""Node accounts (password users) and registered backend clients, kept in the node database.

Passwords are hashed with argon2id (argon2-cffi); a login for an unknown user still spends one
hash verification so response time does not reveal which usernames exist. Every password sign-in
(the token endpoint's password grant, the SMART authorize page, the doctors' web pages) goes
through :meth:`AccountStore.authenticate`, which throttles and locks out per account
(``trust.login_throttle``: 5 free failures, then 60 s doubling to 1 h; a locked account is
refused with 429 before any hash is spent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.auth.client_keys import ClientKeyError, check_jwks_url, load_client_public_key
from node.auth.roles import ROLES, SYSTEM_SCOPE_PREFIX
from node.auth.tables import accounts, backend_clients, login_throttle
from node.schemas import AUTH_MIGRATIONS as MIGRATIONS_DIR
from servicekit.storage import upgrade_schema
from trust.login_throttle import LoginThrottle, ThrottlePolicy
from trust.password_hashing import unknown_user_hash
from trust.scopes import parse_scopes

__all__ = [
    "Account",
    "BackendClient",
    "AccountStore",
    "AccountError",
    "migrate_accounts",
    "MIN_PASSWORD_LENGTH",
]

MIN_PASSWORD_LENGTH = 8
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_FHIR_USER = re.compile(
    r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$"
)


class AccountError(ValueError):
    """Bad account or client data (message is safe to show)."""


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    patient_id: str | None
    active: bool
    # SMART fhirUser: the resource this person is (a patient account: its Patient).
    fhir_user: str | None = None


@dataclass(frozen=True)
class BackendClient:
    client_id: str
    public_key: Any  # EC or RSA public key (node.auth.client_keys); None with a jwks_url
    scopes: tuple[str, ...]
    active: bool
    jwks_url: str | None = None


def migrate_accounts(engine: Engine) -> None:
    """Create or upgrade the account tables (own Alembic version table)."""
    upgrade_schema(engine, MIGRATIONS_DIR)


def _now() -> datetime:
    return datetime.now(UTC)


class AccountStore:
    def __init__(
        self,
        engine: Engine,
        hasher: PasswordHasher | None = None,
        throttle_policy: ThrottlePolicy | None = None,
    ) -> None:
        self.engine = engine
        self.hasher = hasher or PasswordHasher()
        self.throttle = LoginThrottle(engine, login_throttle, throttle_policy)
        # Verified against when the username is unknown, so timing does not reveal accounts.
        self._dummy_hash = unknown_user_hash(self.hasher)

    # --- password accounts ---

    def add_user(
        self,
        username: str,
        password: str,
        role: str,
        *,
        patient_id: str | None = None,
        fhir_user: str | None = None,
    ) -> Account:
        if not _USERNAME.match(username):
            raise AccountError(
                "username must be 1-128 letters, digits or . _ @ - and start with a letter/digit"
            )
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
        if role == "patient":
            if not patient_id:
                raise AccountError("a patient account must be linked to a Patient id (--patient)")
            if not _PATIENT_ID.match(patient_id):
                raise AccountError(f"{patient_id!r} is not a valid FHIR id")
        elif patient_id:
            raise AccountError("only patient accounts are linked to a Patient")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
        if role == "patient":
            fhir_user = f"Patient/{patient_id}"
        elif fhir_user is not None and not _FHIR_USER.match(fhir_user):
            raise AccountError("fhir_user must be Practitioner/<id> (or PractitionerRole, Person)")
        row = {
            "username": username,
            "password_hash": self.hasher.hash(password),
            "role": role,
            "patient_id": patient_id,
            "active": True,
            "created_at": _now(),
            "fhir_user": fhir_user,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(accounts).values(**row))
        except IntegrityError:
            raise AccountError(f"user {username!r} already exists") from None
        return Account(username, role, patient_id, True, fhir_user)

    def get_user(self, username: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.username == username)).first()
        if row is None:
            return None
        return Account(row.username, row.role, row.patient_id, bool(row.active), row.fhir_user)

    def authenticate(self, username: str, password: str) -> Account | None:
        """The account if the password is right and the account active, else None (the failure
        counted against the account). Raises ``trust.login_throttle.AccountLocked`` (429) while
        the account is locked, before the password is checked."""
        self.throttle.check(username)
        account = self._verify(username, password)
        if account is None:
            self.throttle.failed(username)
        else:
            self.throttle.succeeded(username)
        return account

    def _verify(self, username: str, password: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.username == username)).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or not row.active:
            return None
        if self.hasher.check_needs_rehash(stored):
            with self.engine.begin() as conn:
                conn.execute(
                    update(accounts)
                    .where(accounts.c.username == username)
                    .values(password_hash=self.hasher.hash(password))
                )
        return Account(row.username, row.role, row.patient_id, True, row.fhir_user)

    def set_active(self, username: str, active: bool) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(accounts).where(accounts.c.username == username).values(active=active)
            )
        if result.rowcount == 0:
            raise AccountError(f"no user {username!r}")

    # --- backend clients ---

    def add_client(
        self,
        client_id: str,
        public_key_pem: str | None,
        scopes: str,
        *,
        jwks_url: str | None = None,
    ) -> BackendClient:
        """Register a backend client with its PEM public key, or (``public_key_pem`` None or
        empty) the JWKS URL where it publishes its keys."""
        if not _CLIENT_ID.match(client_id):
            raise AccountError("client id must be 1-128 letters, digits or . _ : -")
        if bool(public_key_pem and public_key_pem.strip()) == bool(jwks_url):
            raise AccountError("give the client's public key or its JWKS URL (one of the two)")
        try:
            key = load_client_public_key(public_key_pem) if public_key_pem else None
            if jwks_url:
                check_jwks_url(jwks_url)
        except ClientKeyError as exc:
            raise AccountError(str(exc)) from None
        items = scopes.split()
        parsed = parse_scopes(items)
        if not items or len(parsed) != len(items):
            raise AccountError(f"scopes must be SMART resource scopes, got {scopes!r}")
        if any(s.context != "system" for s in parsed):
            raise AccountError(f"backend clients get {SYSTEM_SCOPE_PREFIX}… scopes only")
        row = {
            "client_id": client_id,
            "public_key_pem": public_key_pem.strip() + "\n" if public_key_pem else "",
            "scopes": " ".join(items),
            "active": True,
            "created_at": _now(),
            "jwks_url": jwks_url,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(backend_clients).values(**row))
        except IntegrityError:
            raise AccountError(f"client {client_id!r} already exists") from None
        return BackendClient(client_id, key, tuple(items), True, jwks_url)

    def get_client(self, client_id: str) -> BackendClient | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(backend_clients).where(backend_clients.c.client_id == client_id)
            ).first()
        if row is None:
            return None
        return BackendClient(
            row.client_id,
            load_client_public_key(row.public_key_pem) if row.public_key_pem else None,
            tuple(row.scopes.split()),
            bool(row.active),
            row.jwks_url,
        )
