"""Patient accounts: one-time enrolment codes issued through a node, passwords (argon2), login.

A node that knows the patient (it holds the national id and the linkage key) asks for a code for
the patient's pseudonym and hands it to the patient. The patient redeems it once with a password
of their choosing and receives a short login *handle* (pseudonyms are long hex strings). Codes
are random (80 bits), stored only as SHA-256, expire, and are burnt atomically on first use.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from consent.model import check_pseudonym
from consent.schema import enrolment_codes, patients
from servicekit.outcome import BadRequest, Conflict, Unauthorized
from trust.password_hashing import password_hasher, unknown_user_hash

__all__ = ["PatientAccounts", "IssuedCode", "Enrolment", "MIN_PASSWORD_LENGTH"]

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no look-alikes (I/1, O/0, L, U)


@dataclass(frozen=True)
class IssuedCode:
    code: str
    patient: str
    expires_at: datetime


@dataclass(frozen=True)
class Enrolment:
    patient: str
    handle: str


def _code_hash(code: str) -> str:
    normalised = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(normalised.encode()).hexdigest()


def _new_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


class PatientAccounts:
    def __init__(
        self,
        engine: Engine,
        *,
        code_ttl: int = 24 * 3600,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.engine = engine
        self.code_ttl = code_ttl
        self._hasher = hasher or password_hasher("rfc9106-low-memory")
        # Verified against when the username is unknown, so timing does not reveal enrolment.
        self._dummy_hash = unknown_user_hash(self._hasher)

    def issue_code(self, pseudonym: str, *, issued_by: str) -> IssuedCode:
        check_pseudonym(pseudonym, "patient")
        code = _new_code()
        expires = datetime.now(UTC) + timedelta(seconds=self.code_ttl)
        with self.engine.begin() as conn:
            conn.execute(
                insert(enrolment_codes).values(
                    code_hash=_code_hash(code),
                    pseudonym=pseudonym,
                    issued_by=issued_by,
                    expires_at=expires,
                )
            )
        return IssuedCode(code, pseudonym, expires)

    def enrol(self, code: str, password: str) -> Enrolment:
        """Redeem a code once and set the password. Re-enrolling replaces the password."""
        if not isinstance(code, str) or not code.strip():
            raise BadRequest("code is required", expression=["code"])
        if not isinstance(password, str) or not (
            MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
        ):
            raise BadRequest(
                f"password must be {MIN_PASSWORD_LENGTH}..{MAX_PASSWORD_LENGTH} characters",
                expression=["password"],
            )
        password_hash = self._hasher.hash(password)  # outside the transaction: it is slow
        now = datetime.now(UTC)
        code_hash = _code_hash(code)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(enrolment_codes.c.pseudonym, enrolment_codes.c.issued_by).where(
                    enrolment_codes.c.code_hash == code_hash
                )
            ).first()
            # Burn it: only one transaction can flip used_at from NULL, and only before expiry.
            burnt = conn.execute(
                update(enrolment_codes)
                .where(
                    enrolment_codes.c.code_hash == code_hash,
                    enrolment_codes.c.used_at.is_(None),
                    enrolment_codes.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if row is None or burnt.rowcount != 1:
                raise BadRequest(
                    "enrolment code is unknown, expired or already used", expression=["code"]
                )
            existing = conn.execute(
                select(patients.c.handle).where(patients.c.pseudonym == row.pseudonym)
            ).first()
            if existing is not None:
                conn.execute(
                    update(patients)
                    .where(patients.c.pseudonym == row.pseudonym)
                    .values(password_hash=password_hash)
                )
                return Enrolment(row.pseudonym, existing.handle)
            for _ in range(5):
                handle = "p-" + "".join(secrets.choice(_CODE_ALPHABET.lower()) for _ in range(8))
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(patients).values(
                                pseudonym=row.pseudonym,
                                handle=handle,
                                password_hash=password_hash,
                                enrolled_by=row.issued_by,
                                created_at=now,
                            )
                        )
                    return Enrolment(row.pseudonym, handle)
                except IntegrityError:
                    continue
        raise Conflict("could not allocate a login handle; retry")

    def authenticate(self, username: str, password: str) -> str:
        """Pseudonym of the patient whose handle or pseudonym and password match."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(patients.c.pseudonym, patients.c.password_hash).where(
                    (patients.c.handle == username) | (patients.c.pseudonym == username)
                )
            ).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            raise Unauthorized("invalid username or password") from None
        if row is None:
            raise Unauthorized("invalid username or password")
        if self._hasher.check_needs_rehash(stored):  # the profile changed since this was stored
            with self.engine.begin() as conn:
                conn.execute(
                    update(patients)
                    .where(patients.c.pseudonym == row.pseudonym)
                    .values(password_hash=self._hasher.hash(password))
                )
        return str(row.pseudonym)

    def is_enrolled(self, pseudonym: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(patients.c.pseudonym).where(patients.c.pseudonym == pseudonym)
                ).first()
                is not None
            )
