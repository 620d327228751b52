"""The pseudonymisation authority as a real process for the pseudonym-store tests (the node's,
``tests/trust/test_pseudonym_store.py``, and the SuperNode's,
``tests/federated/test_pseudonyms_store.py``, which puts this folder on ``sys.path``): on a fixed
port, so a restart keeps its URL, and what it evaluated counted from its own audit ledger."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.launcher import Service, start_service
from servicekit.storage import make_engine, sqlite_url
from trust.audit_ledger import AuditLedger
from trust.pki import init_ca, issue_org


def make_pki(root: Path, *orgs: str) -> dict[str, Path]:
    """A CA under ``root`` and a certificate (host 127.0.0.1) for each of ``orgs``: the CA's
    folder under ``"ca"``, each organisation's under its id."""
    ca = root / "ca"
    init_ca(ca)
    for org in orgs:
        issue_org(ca, org, host="127.0.0.1")
    return {"ca": ca} | {org: ca / "orgs" / org for org in orgs}


class Authority:
    """The authority's process on a fixed port (so a restart keeps its URL), and its ledger;
    ``client`` is the one organisation it serves."""

    def __init__(self, root: Path, ca: Path, client: str) -> None:
        self.root, self.ca, self.client = root, ca, client
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.service: Service | None = None

    def start(self) -> None:
        self.service = start_service(
            "pseudonym",
            ["pseudonym", "serve", "--data-dir", str(self.root / "svc"), "--port", str(self.port),
             "--ca-dir", str(self.ca), "--org-id", "authority", "--client", self.client],
            base_url=self.url, log_dir=self.root / "logs", ports_dir=self.root / "svc",
        )  # fmt: skip

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def evaluated(self) -> int:
        """Elements the authority evaluated (granted calls), from its audit ledger."""
        engine = make_engine(sqlite_url(self.root / "svc", "pseudonym"))
        try:
            total = 0
            for entry in AuditLedger(engine, create=False).entries():
                event: dict[str, Any] = json.loads(json.dumps(entry.event))
                if event.get("outcomeDesc") != "evaluated":
                    continue
                details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
                total += int(details["blinded-elements"])
            return total
        finally:
            engine.dispose()


@contextmanager
def running_authority(root: Path, ca: Path, client: str) -> Iterator[Authority]:
    """An :class:`Authority` started under ``root``, stopped on leaving (a test may stop and
    start it again meanwhile)."""
    auth = Authority(root, ca, client)
    auth.start()
    try:
        yield auth
    finally:
        auth.stop()
