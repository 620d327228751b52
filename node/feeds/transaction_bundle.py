"""Build FHIR transaction Bundles whose entries are idempotent (conditional create / update).

Every feed writes through this one builder, so "the same input twice adds nothing" is one rule:
each resource carries a business identifier and is POSTed with ``ifNoneExist`` on it (or PUT as a
conditional update on it); entries reference each other by deterministic ``urn:uuid`` fullUrls.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

__all__ = ["TransactionBuilder", "identifier_search", "token"]

# Namespace for the deterministic urn:uuid fullUrls of feed-built bundles.
_FEEDS_NAMESPACE = uuid.UUID("6f0c7a2e-5d8b-4c1e-9a57-1d3f0b8e2c41")


def token(system: str, value: str) -> str:
    """A FHIR token search value ``system|value`` (percent-encoding only what a URL needs)."""
    return f"{quote(system, safe=':/.-_~')}|{quote(value, safe=':/.-_~')}"


def identifier_search(system: str, value: str) -> str:
    """The ``identifier=system|value`` query used by ifNoneExist and conditional references."""
    return f"identifier={token(system, value)}"


class TransactionBuilder:
    """Collects entries of one transaction Bundle. ``key`` strings make fullUrls deterministic."""

    def __init__(self, namespace: str) -> None:
        self._namespace = uuid.uuid5(_FEEDS_NAMESPACE, namespace)
        self._entries: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def full_url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self._namespace, key)}"

    def create(
        self, key: str, resource: dict[str, Any], *, if_none_exist: str | None = None
    ) -> str:
        """POST ``resource`` (conditional when ``if_none_exist`` is set); returns its fullUrl."""
        request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
        return self._add(key, resource, request)

    def conditional_update(self, key: str, resource: dict[str, Any], search: str) -> str:
        """PUT ``resource`` to ``Type?search`` (update the match, create when there is none)."""
        request = {"method": "PUT", "url": f"{resource['resourceType']}?{search}"}
        return self._add(key, resource, request)

    def _add(self, key: str, resource: dict[str, Any], request: dict[str, Any]) -> str:
        full_url = self.full_url(key)
        if full_url in self._seen:
            raise ValueError(f"duplicate bundle entry key {key!r}")
        self._seen.add(full_url)
        self._entries.append({"fullUrl": full_url, "resource": resource, "request": request})
        return full_url

    def __len__(self) -> int:
        return len(self._entries)

    def bundle(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": list(self._entries)}
