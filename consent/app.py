"""The consent registry's FastAPI app: wiring of store, accounts, keys, ledger and routes."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from jwt.algorithms import ECAlgorithm

from consent.accounts import PatientAccounts
from consent.api_consents import router as consents_router
from consent.api_decide import router as decide_router
from consent.api_oidc import router as oidc_router
from consent.api_patients import router as patients_router
from consent.auth import Authenticator
from consent.decision_token import jwks_of, x5c_of
from consent.decisions import DecisionService
from consent.oidc import AuthorizationCodes, PublicClient
from consent.schema import assertion_jtis, login_throttle
from consent.settings import RegistrySettings
from consent.store import ConsentStore, migrate
from servicekit.outcome import install_error_handlers
from servicekit.request_limits import InputLimits, install_request_limits
from servicekit.service_metrics import install_metrics
from servicekit.storage import make_engine, sqlite_url
from trust.audit_ledger import AuditLedger
from trust.certificates import load_certificate
from trust.jti_store import DbReplayCache
from trust.login_throttle import LoginThrottle, ThrottlePolicy
from trust.password_hashing import password_hasher
from trust.pki import PkiError, load_org
from trust.tokens import SigningKey, key_thumbprint, load_or_create_signing_key

__all__ = ["create_app"]

log = logging.getLogger("ipjms.consent")


def _token_urls(settings: RegistrySettings) -> list[str]:
    urls = [settings.base_url() + "/auth/token"]
    for host in ("127.0.0.1", "localhost"):
        url = f"http://{host}:{settings.port}/auth/token"
        if url not in urls:
            urls.append(url)
    return urls


def _decision_keys(
    settings: RegistrySettings, data_dir: Path
) -> tuple[SigningKey, tuple[str, ...], dict[str, Any]]:
    """The key decisions are signed with, its ``x5c`` (none without credentials) and the JWKS.
    Key ids are RFC 7638 thumbprints. With ``org_dir`` the key is the registry's CA-certified
    signing key, and the keys a rotation replaced (``previous/<n>/``) are published beside it,
    so decisions signed before the rotation still verify."""
    if settings.org_dir is None:
        own = load_or_create_signing_key(data_dir / "keys" / "decision.pem")
        key = dataclasses.replace(own, kid=key_thumbprint(own.public_key))
        return key, (), jwks_of(key)
    creds = load_org(settings.org_dir)
    if creds.org_id != settings.org_id:
        raise PkiError(
            f"{settings.org_dir} holds credentials of {creds.org_id}, not of {settings.org_id}"
        )
    key = SigningKey(key_thumbprint(creds.signing_public_key), creds.signing_key, "ES384")
    x5c = x5c_of(creds.signing_cert_pem)
    jwks = jwks_of(key, certificates={key.kid: x5c})
    for old in sorted(settings.org_dir.glob("previous/*/signing.cert.pem")):
        public = load_certificate(old.read_bytes()).public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
            jwk.update(
                kid=key_thumbprint(public), alg="ES384", use="sig", x5c=x5c_of(old.read_bytes())
            )
            jwks["keys"].append(jwk)
    return key, tuple(x5c), jwks


def create_app(settings: RegistrySettings) -> FastAPI:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url or sqlite_url(data_dir, "consent"))
    migrate(engine)
    ledger = AuditLedger(engine)
    token_key = load_or_create_signing_key(data_dir / "keys" / "access-token.pem")
    decision_key, x5c, published_keys = _decision_keys(settings, data_dir)
    issuer = settings.base_url()

    app = FastAPI(title="IPJMS consent registry", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.ledger = ledger
    app.state.issuer = issuer
    app.state.org_id = settings.org_id
    app.state.consent_store = ConsentStore(engine)
    app.state.accounts = PatientAccounts(
        engine,
        code_ttl=settings.enrolment_code_ttl,
        hasher=password_hasher(settings.password_hash),
    )
    app.state.authenticator = Authenticator(
        token_key,
        issuer=issuer,
        token_urls=_token_urls(settings),
        ca_dir=settings.ca_dir.resolve() if settings.ca_dir else None,
        token_ttl=settings.token_ttl,
        replay_cache=DbReplayCache(engine, assertion_jtis),
    )
    app.state.jwks = published_keys
    # The region's patient sign-in (OpenID Connect, consent/oidc.py)
    app.state.token_jwks = {"keys": [token_key.public_jwk()]}
    app.state.oidc_clients = {
        cid: PublicClient(cid, tuple(uris)) for cid, uris in settings.oidc_clients.items()
    }
    app.state.oidc_codes = AuthorizationCodes(engine)
    app.state.login_throttle = LoginThrottle(
        engine,
        login_throttle,
        ThrottlePolicy(
            settings.login_free_failures, settings.login_base_lockout, settings.login_max_lockout
        ),
    )
    app.state.decisions = DecisionService(
        app.state.consent_store,
        ledger,
        decision_key,
        issuer=issuer,
        observer=settings.org_id,
        ttl=settings.decision_ttl,
        x5c=x5c,
    )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "consent-registry"}

    @app.get("/livez")
    def livez() -> dict[str, Any]:
        """Liveness: the process answers, nothing else is asked (probes use this, so a database
        outage never restarts the registry)."""
        return {"status": "alive"}

    @app.get("/.well-known/jwks.json")
    def jwks(request: Request) -> JSONResponse:
        return JSONResponse(request.app.state.jwks, headers={"Cache-Control": "max-age=300"})

    app.include_router(patients_router)
    app.include_router(oidc_router)
    app.include_router(decide_router)
    app.include_router(consents_router)
    install_request_limits(
        app,
        InputLimits(
            max_body_bytes=settings.max_request_bytes,
            integer_params={"_count": (0, 2**31 - 1)},
        ),
    )
    install_metrics(app, "consent")
    log.info("consent registry ready (issuer %s)", issuer)
    return app
