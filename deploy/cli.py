"""The ``ipjms`` command: an umbrella whose sub-commands come from each package's ``cli`` module.

Heavy imports (torch, flwr, grpc) stay inside the commands that need them, so ``ipjms --help``
and the service commands start quickly.
"""

from __future__ import annotations

import typer

from consent.cli import app as consent_app
from coordinator.cli import app as coordinator_app
from deploy.backup_cli import backup_app
from deploy.demo_cli import demo
from deploy.migrate import migrate
from deploy.up import up
from federated.cli import app as fl_app
from node.cli import app as node_app
from trust.cli import audit_app, pki_app
from trust.pseudonym_cli import pseudonym_app

app = typer.Typer(
    name="ipjms",
    help="IPJMS: a federated, consent-scoped FHIR network for a health region.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(node_app, name="node", help="A hospital or clinic node (FHIR store, API, ingestion).")
app.add_typer(coordinator_app, name="coordinator", help="The regional exchange broker.")
app.add_typer(consent_app, name="consent", help="The consent registry.")
app.add_typer(fl_app, name="fl", help="Federated training (Flower + DP-SGD).")
app.add_typer(pki_app, name="pki", help="The regional PKI: CA and organisation certificates.")
app.add_typer(audit_app, name="audit", help="Audit ledgers.")
app.add_typer(
    pseudonym_app, name="pseudonym", help="The pseudonymisation authority (RFC 9497 OPRF)."
)
app.add_typer(backup_app, name="backup", help="Encrypted database backups (seal / open).")
app.command("demo")(demo)
app.command("up")(up)
app.command("migrate")(migrate)

if __name__ == "__main__":  # pragma: no cover
    app()
