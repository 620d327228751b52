"""Who is calling (from a verified access token) and what the token lets them reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servicekit.outcome import Forbidden
from trust.scopes import Scope, allows, parse_scopes

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    subject: str  # username, or client id for backend clients
    role: str  # doctor | nurse | admin | patient | system
    scopes: tuple[Scope, ...]
    patient_id: str | None  # the linked Patient of a patient account
    org_id: str
    scope_string: str = ""

    @classmethod
    def from_claims(cls, claims: dict[str, Any], org_id: str) -> Principal:
        scope_string = str(claims.get("scope", ""))
        return cls(
            subject=str(claims["sub"]),
            role=str(claims.get("role", "")),
            scopes=tuple(parse_scopes(scope_string)),
            patient_id=claims.get("patient"),
            org_id=org_id,
            scope_string=scope_string,
        )

    @property
    def writer(self) -> str:
        """Who this is in the store's commit events: ``<role>:<subject>`` (e.g.
        ``doctor:alice``, ``system:fl-scorer``)."""
        return f"{self.role or 'unknown'}:{self.subject}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scope_string.split()

    def compartment_for(self, resource_type: str, interaction: str) -> str | None:
        """None if the token reaches every resource of the type for this interaction; the patient
        id if it reaches only that patient's compartment. Raises Forbidden if it reaches none."""
        contexts = allows(self.scopes, resource_type, interaction)
        if contexts & {"user", "system"}:
            return None
        if "patient" in contexts:
            if not self.patient_id:
                raise Forbidden("patient-context token carries no patient")
            return self.patient_id
        raise Forbidden(f"token scope does not allow {interaction} on {resource_type}")
