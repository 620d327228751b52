"""SMART discovery (pure): the ``.well-known/smart-configuration`` document and the
CapabilityStatement's ``oauth-uris`` security extension, from the node's base URL.

SMART App Launch 2.x §Conformance: the document is served at ``[FHIR base]/.well-known/
smart-configuration`` (here ``/fhir/.well-known/smart-configuration``; also at the root); its
``capabilities`` say exactly what this authorization server does — standalone launch with
patient context (patient picker for practitioners), public and confidential (symmetric) apps,
Backend Services (``client-confidential-asymmetric``), v1 and v2 scopes, ``openid fhirUser``,
offline and online refresh tokens, and EHR launch with patient context (the ``launch`` handle
from ``POST /auth/launch``, node/auth/ehr_launch.py).
"""

from __future__ import annotations

from typing import Any

from node.auth.client_keys import CLIENT_ASSERTION_ALGORITHMS
from node.auth.smart_apps import NON_RESOURCE_SCOPES

__all__ = ["smart_configuration", "oauth_uris_extension", "endpoints", "OAUTH_URIS"]

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES = (
    "launch-standalone",
    "launch-ehr",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "context-banner",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)


def endpoints(base_url: str) -> dict[str, str]:
    base = base_url.rstrip("/")
    return {
        "issuer": base,
        "authorize": f"{base}/auth/authorize",
        "token": f"{base}/auth/token",
        "jwks": f"{base}/.well-known/jwks.json",
        "fhir": f"{base}/fhir",
    }


def smart_configuration(base_url: str) -> dict[str, Any]:
    urls = endpoints(base_url)
    return {
        "issuer": urls["issuer"],
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGORITHMS),
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": [
            *sorted(NON_RESOURCE_SCOPES),
            "patient/*.rs",
            "patient/*.read",
            "user/*.cruds",
            "user/*.rs",
            "user/*.read",
            "user/*.write",
            "system/*.rs",
            "system/*.read",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }


def oauth_uris_extension(base_url: str) -> dict[str, Any]:
    urls = endpoints(base_url)
    return {
        "url": OAUTH_URIS,
        "extension": [
            {"url": "authorize", "valueUri": urls["authorize"]},
            {"url": "token", "valueUri": urls["token"]},
        ],
    }
