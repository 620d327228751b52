"""The patient's side of a node as a feature (``PATIENT``): the pseudonym → Patient links table
of the region's patient sign-in, and the patient's routes (home readings, questionnaires)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import Engine

from node.auth.regional import RegionalPatientTokens
from node.feature import Feature
from node.patient.links import PatientLinks
from node.patient.routes import router
from node.schemas import PATIENT_MIGRATIONS as MIGRATIONS_DIR
from node.settings import NodeSettings

__all__ = ["PATIENT", "regional_patient_tokens", "MIGRATIONS_DIR"]


def regional_patient_tokens(
    settings: NodeSettings, engine: Engine, store: Any, pseudonymiser: Any
) -> RegionalPatientTokens | None:
    """What accepts the consent registry's patient tokens here; None without a registry."""
    consent = settings.consent
    if consent.url is None or not consent.patient_login:
        return None
    verify: bool | str = True
    if settings.pki.ca_dir is not None and (settings.pki.ca_dir / "ca.cert.pem").exists():
        verify = str(settings.pki.ca_dir / "ca.cert.pem")
    return RegionalPatientTokens(
        consent.url,
        PatientLinks(engine, store, pseudonymiser).resolve,
        settings.org_id,
        pins=frozenset(consent.patient_key_pins),
        http=httpx.Client(timeout=5.0, verify=verify),
    )


PATIENT = Feature(name="patient", routers=(router,), migrations=(MIGRATIONS_DIR,))
