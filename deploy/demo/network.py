"""The running demo network: its services, its nodes, and how a story step reports itself."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from deploy.launcher import Service, start_service

__all__ = [
    "DemoNetwork",
    "NodeInfo",
    "StepFailed",
    "AUTHORITY_ORG",
    "COORDINATOR_ORG",
    "CONSENT_ORG",
    "DEMO_NODES",
]

# The demo region's organisations, in one place: every chapter uses these ids.
AUTHORITY_ORG = "org-authority"  # the regional health authority (runs the SuperLink, trains)
COORDINATOR_ORG = "org-coordinator"
CONSENT_ORG = "org-consent-registry"
# (org id, name, level, seed profile)
DEMO_NODES: tuple[tuple[str, str, str, str], ...] = (
    ("org-tertiary", "Regional Tertiary Hospital", "tertiary", "tertiary"),
    ("org-clinic-b", "Riverside Community Clinic", "community", "community"),
    ("org-clinic-c", "Hillview Community Clinic", "community", "community"),
)


class StepFailed(Exception):
    """A story step did not do what it should; the demo exits non-zero."""


@dataclass
class NodeInfo:
    org_id: str
    name: str
    level: str  # tertiary | county | community
    profile: str  # seed profile: tertiary | community
    data_dir: Path
    port: int
    url: str = ""
    admin_password: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoNetwork:
    workdir: Path
    console: Console
    services: dict[str, Service] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    # Facts one step hands to later ones (tokens, ids, URLs); never printed wholesale.
    facts: dict[str, Any] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    results: list[tuple[str, bool, float, str]] = field(default_factory=list)
    # The region's nodes (org id, name, level, seed profile): the demo's three, or a
    # network.toml's (``ipjms up``). Chapters iterate this, never DEMO_NODES directly.
    node_specs: tuple[tuple[str, str, str, str], ...] = DEMO_NODES
    # Database URL per service ("consent", "coordinator", "node-<org>"); a service without one
    # keeps SQLite in its data dir (``ipjms demo``). ``ipjms up`` fills this with PostgreSQL.
    db_urls: dict[str, str] = field(default_factory=dict)
    # Rounds of the federated chapter's training run (``--fl-rounds``; the story's default 5).
    fl_rounds: int = 5
    # HTTPS on every node, the registry and the coordinator's status API, with each
    # organisation's certificate from the regional PKI (``ipjms up`` with ``[tls] enabled``;
    # clients trust the regional CA through SSL_CERT_FILE).
    tls: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def tls_args(self, org_dir: Path) -> list[str]:
        """``--tls-cert``/``--tls-key`` of the organisation's TLS pair when serving HTTPS."""
        if not self.tls:
            return []
        return [
            "--tls-cert",
            str(org_dir / "tls.cert.pem"),
            "--tls-key",
            str(org_dir / "tls.key.pem"),
        ]

    def db_args(self, service: str) -> list[str]:
        """``["--db", URL]`` for a service with a configured database, else ``[]``."""
        url = self.db_urls.get(service)
        return ["--db", url] if url else []

    def service_dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        base_url: str,
        env: dict[str, str] | None = None,
        timeout: float = 90.0,
        wait: bool = True,
    ) -> Service:
        """Start a service of the network (stopped by ``stop_all``); ``wait=False`` returns at
        once, for the caller to ``deploy.launcher.wait_healthy`` several started together."""
        service = start_service(
            name,
            args,
            base_url=base_url,
            log_dir=self.workdir / "logs",
            env=env,
            timeout=timeout,
            wait=wait,
        )
        self.services[name] = service
        return service

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        """Run one story step: prints its title, what it found, its latency and ✔/✘."""
        self.console.print(f"[bold]▶ {title}[/bold]")
        notes: list[str] = []
        started = time.perf_counter()
        try:
            yield notes
        except Exception as exc:
            elapsed = time.perf_counter() - started
            for note in notes:
                self.console.print(f"    {note}")
            self.console.print(f"  [red]✘ {title} failed after {elapsed:.2f}s: {exc}[/red]")
            self.results.append((title, False, elapsed, str(exc)))
            raise StepFailed(title) from exc
        elapsed = time.perf_counter() - started
        for note in notes:
            self.console.print(f"    {note}")
        self.console.print(f"  [green]✔[/green] {title} ({elapsed:.2f}s)")
        self.results.append((title, True, elapsed, ""))
