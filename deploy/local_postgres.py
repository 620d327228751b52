"""A PostgreSQL server of its own for ``ipjms up`` (``[postgres] managed = true``): TLS only.

``initdb`` + ``pg_ctl`` from the machine's PostgreSQL (Debian's /usr/lib/postgresql/*/bin, or
PATH) into a data directory, with a server certificate issued by the regional CA for 127.0.0.1
and a ``pg_hba.conf`` that admits ``hostssl`` with SCRAM only and rejects every plaintext
connection. Clients connect with ``sslmode=verify-full`` (chain and host name verified).

PostgreSQL refuses to run as root: when ``ipjms up`` runs as root (CI, a container), the server
runs as the ``postgres`` system user (``runuser``) from a data directory that user owns.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalPostgres", "PostgresUnavailable", "find_bin"]

SUPERUSER = "ipjms"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or the server did not start; the message says why."""


def find_bin(name: str) -> str:
    """``initdb``/``pg_ctl``: Debian's newest versioned folder first, then PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in versions:
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise PostgresUnavailable(f"{name} not found (install PostgreSQL's server package)")
    return found


@dataclass
class LocalPostgres:
    """One TLS-only server on 127.0.0.1:``port`` with its data under ``data_dir``."""

    data_dir: Path
    port: int
    ca_cert: Path
    password_file: Path

    @property
    def url(self) -> str:
        """The maintenance database's URL, TLS verified against the regional CA."""
        return (
            f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={self.ca_cert}"
        )

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self._as_root():
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    @classmethod
    def prepare(
        cls, state_dir: Path, *, ca_dir: Path, port: int, server_cert: Path, server_key: Path
    ) -> LocalPostgres:
        """Initialise the data directory once (kept across runs), with TLS and the hba rules."""
        state_dir.mkdir(parents=True, exist_ok=True)
        password_file = state_dir / "password"
        if not password_file.exists():
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        if cls._as_root():
            # a folder the postgres user owns (the state dir may sit in root's private tmp)
            tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
            data_dir = Path(f"/var/tmp/ipjms-postgres-{tag}")  # noqa: S108 - made 0700, owned
        else:
            data_dir = state_dir / "data"
        pg = cls(data_dir, port, ca_dir / "ca.cert.pem", password_file)
        if not (data_dir / "PG_VERSION").exists():
            pg._initdb()
        pg._configure(server_cert, server_key)
        return pg

    def _own(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self._as_root():
            shutil.chown(path, "postgres", "postgres")

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir, 0o700)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        pwfile.write_text(self.password_file.read_text().strip() + "\n")
        self._own(pwfile, 0o600)
        try:
            done = self._run(
                find_bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                "--pwfile", str(pwfile), "--auth", "scram-sha-256", "--encoding", "UTF8",
                "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-400:]}")

    def _configure(self, server_cert: Path, server_key: Path) -> None:
        for src, name in ((server_cert, "server.crt"), (server_key, "server.key")):
            target = self.data_dir / name
            shutil.copyfile(src, target)
            self._own(target, 0o600)
        (self.data_dir / "pg_hba.conf").write_text(
            "# ipjms up: TLS only (written by deploy/local_postgres.py)\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
            "hostnossl all all ::/0 reject\n"
        )
        (self.data_dir / "ipjms.conf").write_text(
            "listen_addresses = '127.0.0.1'\n"
            "unix_socket_directories = ''\n"
            "ssl = on\n"
            "ssl_cert_file = 'server.crt'\n"
            "ssl_key_file = 'server.key'\n"
            "ssl_min_protocol_version = 'TLSv1.3'\n"
            "password_encryption = 'scram-sha-256'\n"
        )
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        if "include_if_exists = 'ipjms.conf'" not in text:
            conf.write_text(text + "\ninclude_if_exists = 'ipjms.conf'\n")
        for path in (self.data_dir / "pg_hba.conf", self.data_dir / "ipjms.conf", conf):
            self._own(path, 0o600)

    def start(self) -> None:
        log = self.data_dir / "server.log"
        done = self._run(
            find_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60",
            "-o", f"-p {self.port}", "start",
        )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            raise PostgresUnavailable(f"PostgreSQL did not start: {done.stderr.strip()} {tail}")

    def stop(self) -> None:
        self._run(find_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
