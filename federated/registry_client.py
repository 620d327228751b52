"""Talking to the coordinator's model registry (publish at the authority, fetch at a node)."""

from __future__ import annotations

from typing import Any

import httpx

from federated.model_card import decode_weights, encode_weights
from trust.backend_auth import make_org_assertion

__all__ = ["RegistryClient", "RegistryError"]


class RegistryError(Exception):
    pass


class RegistryClient:
    def __init__(
        self, base_url: str, creds: Any, *, verify: bool | str = True, timeout: float = 30
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.creds = creds
        self.http = httpx.Client(timeout=timeout, verify=verify)

    def close(self) -> None:
        self.http.close()

    def _auth(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_org_assertion(self.creds, url)}"}

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            try:
                text = "; ".join(i.get("diagnostics", "") for i in r.json().get("issue", []))
            except ValueError:
                text = r.text[:200]
            raise RegistryError(f"model registry answered {r.status_code}: {text}")
        return r.json()

    def publish(self, card: dict[str, Any], arrays: dict[str, Any], *, publish: bool = True) -> str:
        url = f"{self.base_url}/models"
        body = {"card": card, "weights": encode_weights(arrays), "published": publish}
        return str(self._check(self.http.post(url, json=body, headers=self._auth(url)))["id"])

    def list(self, task: str | None = None) -> list[dict[str, Any]]:
        url = f"{self.base_url}/models"
        r = self.http.get(url, params={"task": task} if task else None, headers=self._auth(url))
        return list(self._check(r)["models"])

    def card(self, model_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/models/{model_id}"
        return dict(self._check(self.http.get(url, headers=self._auth(url))))

    def weights(self, model_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/models/{model_id}/weights"
        return decode_weights(self._check(self.http.get(url, headers=self._auth(url)))["weights"])
