"""SMART on FHIR scopes: the one rule for "may this token do that to this resource type".

Scopes look like ``user/Observation.rs``, ``patient/*.read`` (SMART v1) or ``system/*.cruds``
(SMART v2). The context (``patient``, ``user``, ``system``) is returned to the caller, which
must still restrict ``patient/`` tokens to that patient's compartment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Scope", "parse_scopes", "allows", "INTERACTIONS"]

# interaction → SMART v2 permission letter
INTERACTIONS = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)$")


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: frozenset[str]

    def covers(self, resource_type: str, interaction: str) -> bool:
        letter = INTERACTIONS[interaction]
        return (self.resource_type in ("*", resource_type)) and letter in self.permissions


def parse_scopes(scope_string: str | Iterable[str]) -> list[Scope]:
    items = scope_string.split() if isinstance(scope_string, str) else list(scope_string)
    scopes = []
    for item in items:
        m = _SCOPE.match(item)
        if not m:
            continue  # non-resource scopes (openid, launch, ...) carry no resource rights
        ctx, rtype, perm = m.groups()
        letters = _V1.get(perm, perm)
        scopes.append(Scope(ctx, rtype, frozenset(letters)))
    return scopes


def allows(scopes: Iterable[Scope], resource_type: str, interaction: str) -> set[str]:
    """The contexts (patient/user/system) under which the scopes allow the interaction."""
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction}")
    return {s.context for s in scopes if s.covers(resource_type, interaction)}
