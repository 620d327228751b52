"""The authority's analyst accounts: ``<data_dir>/analysts.json`` (mode 0600), user name →
argon2id hash. Read at each sign-in, so an account added while the coordinator runs works at
once. A sign-in for an unknown name still spends one hash (no user enumeration by timing)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from trust.password_hashing import unknown_user_hash

__all__ = ["AnalystAccounts", "ANALYSTS_FILE"]

ANALYSTS_FILE = "analysts.json"
_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
_MIN_PASSWORD = 12


class AnalystAccounts:
    def __init__(self, data_dir: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(data_dir) / ANALYSTS_FILE
        self.hasher = hasher or PasswordHasher()
        self._dummy = unknown_user_hash(self.hasher)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def add(self, username: str, password: str) -> None:
        if not _NAME.match(username):
            raise ValueError("user name: 2–64 lower-case letters, digits, . _ -")
        if len(password) < _MIN_PASSWORD:
            raise ValueError(f"password: at least {_MIN_PASSWORD} characters")
        accounts = self._read()
        accounts[username] = self.hasher.hash(password)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(accounts, fh)

    def verify(self, username: str, password: str) -> bool:
        stored = self._read().get(username)
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False
