"""The patient's pages' calls to the consent registry, with the patient's own regional token:
the OpenID Connect code exchange (PKCE), their consents (list, grant, narrow, revoke) and who saw
their data. The registry decides and audits; these are plain HTTP calls on the patient's behalf."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx

from servicekit.outcome import BadRequest, FhirError, ServiceUnavailable

__all__ = ["PORTAL_CLIENT_ID", "RegistryLink", "new_pkce"]

#: the nodes' patient pages as an OpenID Connect public client of the registry
PORTAL_CLIENT_ID = "ipjms-portal"
TIMEOUT = 15.0


def new_pkce() -> tuple[str, str]:
    """(verifier, S256 challenge) — RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class RegistryLink:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def authorize_url(self, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        query = {
            "response_type": "code",
            "client_id": PORTAL_CLIENT_ID,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.base_url}/oidc/authorize?{urlencode(query)}"

    def _call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = httpx.request(
                method, f"{self.base_url}{path}", headers=headers, timeout=TIMEOUT, **kw
            )
        except httpx.HTTPError:
            raise ServiceUnavailable("the consent registry cannot be reached; try again") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                text = body.get("error_description") or body["issue"][0]["diagnostics"]
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                text = f"the consent registry answered {r.status_code}"
            status = r.status_code if r.status_code in (400, 401, 403, 404, 409, 422) else 503
            raise FhirError(str(text), status=status)
        return r.json() if r.content else {}

    def redeem(self, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        if not code:
            raise BadRequest("the sign-in did not return a code")
        return dict(
            self._call(
                "POST",
                "/oidc/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "client_id": PORTAL_CLIENT_ID,
                    "code_verifier": verifier,
                },
            )
        )

    def consents(self, token: str) -> list[dict[str, Any]]:
        bundle = self._call("GET", "/fhir/Consent", token)
        return [e["resource"] for e in bundle.get("entry", [])]

    def consent(self, token: str, consent_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/fhir/Consent/{consent_id}", token))

    def grant(self, token: str, resource: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/fhir/Consent", token, json=resource))

    def replace(self, token: str, consent_id: str, resource: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/fhir/Consent/{consent_id}", token, json=resource))

    def revoke(self, token: str, consent_id: str) -> None:
        self._call("POST", f"/fhir/Consent/{consent_id}/$revoke", token)

    def disclosures(self, token: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "/patients/me/disclosures", token).get("disclosures", []))
