"""The exchange as a node feature (``EXCHANGE``, listed in the composition root ``node/app.py``).

- ``startup`` (every worker): the :class:`ExchangeContext` — the coordinator channel, over the
  node's services (store, credentials, consent client, linkage key) — on ``app.state.exchange``,
  so the REST routes answer in whichever worker takes the request;
- ``background`` (exactly one worker): the runner's inbox/outbox/locator threads;
- ``migrations``: the exchange tables (run at ``ipjms node init``/``serve``).

Enabled when ``settings.exchange.coordinator_address`` is set; otherwise the routes answer 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from node.exchange.context import ExchangeContext
from node.exchange.routes import router
from node.feature import BackgroundTask, Feature, NodeServices
from node.schemas import EXCHANGE_MIGRATIONS as MIGRATIONS
from node.settings import NodeSettings

__all__ = ["EXCHANGE", "MIGRATIONS", "build_context"]

log = logging.getLogger("ipjms.node.exchange")


def build_context(services: NodeServices) -> ExchangeContext:
    """The exchange's run-time context over the node's services (nothing built twice)."""
    from node.exchange.client import ExchangeClient

    settings = services.settings
    address = settings.exchange.coordinator_address
    if not address or services.credentials is None:  # loaded by the root when exchange is on
        raise RuntimeError("the exchange needs a coordinator address and PKI credentials")
    if services.consent is None:
        log.warning("no consent registry configured: every disclosure will be refused")
    if not settings.exchange.coordinator_org:
        log.warning(
            "exchange.coordinator_org not set: the coordinator is checked by host name only, "
            "so any organisation's certificate valid for %s would pass",
            address,
        )
    return ExchangeContext(
        org_id=settings.org_id,
        org_name=settings.name,
        store=services.store,
        engine=services.engine,
        creds=services.credentials,
        client=ExchangeClient(
            address, services.credentials, server_org=settings.exchange.coordinator_org
        ),
        consent=services.consent or _NoConsent(),
        pseudonymiser=services.pseudonymiser,
        ca_dir=settings.pki.ca_dir,
        observe=services.metrics.observe_exchange_phase,
    )


class _NoConsent:
    """Default deny when no registry is configured."""

    def decide(self, *_a: Any, **_k: Any) -> Any:
        return SimpleNamespace(
            permit=False, classes=(), consent_ids=(), reason="no consent registry configured"
        )

    def verify_decision(self, *_a: Any, **_k: Any) -> Any:
        raise ValueError("no consent registry configured: no decision can be verified")


def _enabled(settings: NodeSettings) -> bool:
    return settings.exchange.enabled


@asynccontextmanager
async def connect(services: NodeServices, app: Any) -> AsyncIterator[None]:
    """Every worker: the context the exchange routes use (None → they answer 503)."""
    app.state.exchange = None
    if not _enabled(services.settings):
        yield
        return
    ctx = build_context(services)
    app.state.exchange = ctx
    try:
        yield
    finally:
        app.state.exchange = None
        ctx.client.close()


@asynccontextmanager
async def run_exchange(_services: NodeServices, app: Any) -> AsyncIterator[None]:
    """One worker: receive (inbox), resend (outbox) and publish pseudonyms (locator)."""
    from node.exchange.runner import ExchangeRunner

    ctx: ExchangeContext = app.state.exchange
    runner = ExchangeRunner(ctx)
    app.state.exchange_runner = runner
    runner.start()
    log.info("exchange connected to coordinator %s", ctx.client.address)
    try:
        yield
    finally:
        runner.stop()


EXCHANGE = Feature(
    name="exchange",
    routers=(router,),
    migrations=(MIGRATIONS,),
    startup=(connect,),
    background=(BackgroundTask("runner", run_exchange, enabled=_enabled),),
)
