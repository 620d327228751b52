"""Settings of the consent registry (env prefix ``IPJMS_CONSENT_``, or ``<data_dir>/consent.toml``).

Every setting has a safe default for the local demo. ``ipjms consent serve`` overrides the ones
given on its command line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from trust.password_hashing import ProfileName

__all__ = ["RegistrySettings"]


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IPJMS_CONSENT_", extra="ignore")

    #: this registry's organisation id (the observer named in its audit events)
    org_id: str = "consent-registry"
    data_dir: Path = Path("consent-data")
    host: str = "127.0.0.1"
    port: int = 8300
    #: database URL; default: SQLite ``<data_dir>/consent.db``
    db_url: str | None = None
    #: the regional CA folder (``ipjms pki init-ca``); organisations authenticate with
    #: assertions signed by keys the CA certified. Without it, org authentication is refused.
    ca_dir: Path | None = None
    #: this registry's organisation credentials (``ipjms pki issue --org <org_id>``): decisions
    #: are then signed with its CA-certified signing key and carry the certificate (``x5c``),
    #: which nodes verify against the CA instead of trusting a JWKS fetched over HTTP.
    org_dir: Path | None = None
    #: public base URL (the audience of org assertions is ``<public_url>/auth/token``)
    public_url: str | None = None
    #: lifetime of access tokens (org and patient), seconds (≤ 300)
    token_ttl: int = 300
    #: lifetime of a signed decision, seconds
    decision_ttl: int = 300
    #: lifetime of a one-time enrolment code, seconds
    enrolment_code_ttl: int = 24 * 3600
    #: largest request body accepted, bytes
    max_request_bytes: int = 256 * 1024
    #: patient apps allowed to sign patients in (OpenID Connect public clients, PKCE): client id
    #: → redirect URIs (loopback URIs match on any port, RFC 8252). The default names the demo's
    #: and the tests' app; a deployment lists its own.
    oidc_clients: dict[str, list[str]] = {
        "ipjms-patient-app": ["http://127.0.0.1/callback", "http://localhost/callback"],
        # the nodes' patient pages (node/portal) on loopback, as in the demo and the tests
        "ipjms-portal": [
            "http://127.0.0.1/app/oidc/callback",
            "http://localhost/app/oidc/callback",
        ],
    }
    #: failed patient logins before an account is locked, the first lock (s, doubling with each
    #: further failure) and the longest lock (trust/login_throttle.py)
    login_free_failures: int = 5
    login_base_lockout: float = 60.0
    login_max_lockout: float = 3600.0
    #: argon2id profile of patient passwords (trust/password_hashing.py names each one's source)
    password_hash: ProfileName = "rfc9106-low-memory"  # noqa: S105 (a profile name)

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
