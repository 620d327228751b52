"""Roles and what each may do, declared as data: the one place to change a role's rights.

Scopes follow SMART on FHIR v2 (``context/Type.cruds``). A ``patient/`` scope is always limited to
the patient the account is linked to (enforced by :mod:`node.auth.deps`).
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["ROLES", "ROLE_SCOPES", "ACCOUNT_ADMIN_SCOPE", "SYSTEM_SCOPE_PREFIX"]

# Not a resource scope: lets the holder manage accounts and backend clients.
ACCOUNT_ADMIN_SCOPE = "node/accounts.manage"
SYSTEM_SCOPE_PREFIX = "system/"

ROLE_SCOPES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "doctor": ("user/*.cruds",),
        "nurse": ("user/*.rs", "user/Observation.cruds"),
        "admin": ("user/*.rs", ACCOUNT_ADMIN_SCOPE),
        # read the own compartment; create and update (what the patient wrote) home readings,
        # questionnaire answers, devices and appointment requests — where the patient goes in
        # each, and who is named the author, is node/auth/patient_writes.py
        "patient": (
            "patient/*.rs",
            "patient/Observation.cu",
            "patient/QuestionnaireResponse.cu",
            "patient/Device.cu",
            "patient/Appointment.cu",
            "patient/MedicationAdministration.cu",
        ),
    }
)
ROLES: tuple[str, ...] = tuple(ROLE_SCOPES)
