"""Start the exchange with the node app (registered in node/api/lifecycle.py BACKGROUND):
open the exchange tables, connect to the coordinator and the consent registry with the
organisation's credentials, run the inbox/outbox/locator threads. Not configured → nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from node.exchange.context import ExchangeContext, PhaseObserver, ignore_phases

__all__ = ["exchange_service", "MIGRATIONS"]

log = logging.getLogger("ipjms.node.exchange")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build_context(
    settings: Any, store: Any, engine: Any, *, observe: PhaseObserver = ignore_phases
) -> ExchangeContext:
    from consent.client import ConsentClient
    from node.exchange.client import ExchangeClient
    from servicekit.storage import upgrade_schema
    from trust.pki import load_org
    from trust.pseudonym import load_or_create_linkage_key

    upgrade_schema(engine, MIGRATIONS)
    creds_dir = settings.org_credentials_dir or settings.data_dir / "credentials"
    creds = load_org(creds_dir)
    if creds.org_id != settings.org_id:
        raise RuntimeError(
            f"credentials in {creds_dir} belong to {creds.org_id}, not {settings.org_id}"
        )
    consent = ConsentClient(settings.consent_url, creds) if settings.consent_url else None
    if consent is None:
        log.warning("no consent registry configured: every disclosure will be refused")
    return ExchangeContext(
        org_id=settings.org_id,
        org_name=settings.name,
        store=store,
        engine=engine,
        creds=creds,
        client=ExchangeClient(settings.coordinator_address, creds),
        consent=consent or _NoConsent(),
        linkage_key=load_or_create_linkage_key(settings.linkage_key_file),
        ca_dir=settings.ca_dir,
        observe=observe,
    )


class _NoConsent:
    """Default deny when no registry is configured."""

    def decide(self, *_a: Any, **_k: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(
            permit=False, classes=(), consent_ids=(), reason="no consent registry configured"
        )


@asynccontextmanager
async def exchange_service(app: Any) -> AsyncIterator[None]:
    settings = app.state.settings
    if not getattr(settings, "coordinator_address", None):
        yield
        return
    from node.exchange.runner import ExchangeRunner

    metrics = getattr(app.state, "metrics", None)
    ctx = build_context(
        settings,
        app.state.store,
        app.state.engine,
        observe=metrics.observe_exchange_phase if metrics is not None else ignore_phases,
    )
    runner = ExchangeRunner(ctx)
    app.state.exchange = ctx
    app.state.exchange_runner = runner
    runner.start()
    log.info("exchange connected to coordinator %s", settings.coordinator_address)
    try:
        yield
    finally:
        runner.stop()
        ctx.client.close()
