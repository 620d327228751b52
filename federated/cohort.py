"""A node's research cohort, read from its own FHIR API and filtered by consent.

The SuperNode authenticates to its node as a registered SMART Backend Services client
(``POST /auth/token``, grant ``client_credentials`` with a signed client assertion), pages
through ``Patient`` and each patient's ``$everything``, keeps only patients whose consent permits
``HRESCH`` (research) to the authority, and turns their records into samples with the feature
spec. Nothing here leaves the node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from federated.feature_spec import NATIONAL_ID_SYSTEMS, Sample, extract_samples
from trust.pseudonymiser import LinkageKeyPseudonymiser, Pseudonymiser

__all__ = [
    "COHORT_CLASSES",
    "EligibilityChecker",
    "ConsentEligibility",
    "BackendTokenSource",
    "FhirCohortReader",
    "Cohort",
    "national_id",
]

log = logging.getLogger("ipjms.federated.cohort")

RESEARCH_PURPOSE = "HRESCH"
# The resource types the feature spec reads: the classes the consent must permit.
COHORT_CLASSES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest")


def national_id_with_system(patient: Mapping[str, Any]) -> tuple[str, str] | None:
    """The patient's national identifier as (system, value), by the spec's system preference."""
    by_system = {
        i.get("system"): i.get("value") for i in patient.get("identifier", []) if i.get("value")
    }
    for system in NATIONAL_ID_SYSTEMS:
        if by_system.get(system):
            return str(system), str(by_system[system])
    return None


def national_id(patient: Mapping[str, Any]) -> str | None:
    """The patient's national identifier (by the spec's system preference), or None."""
    found = national_id_with_system(patient)
    return found[1] if found else None


class EligibilityChecker(Protocol):
    """Decides whether a patient may be part of a research cohort."""

    def eligible(self, patient: Mapping[str, Any]) -> bool: ...


class ConsentEligibility:
    """Eligible iff the consent registry permits ``purpose`` (HRESCH unless told) to the
    authority for ``classes`` (the cohort classes unless told).

    Default deny: no national id, a registry error or a refusal all exclude the patient.
    """

    def __init__(
        self,
        consent_client: Any,
        pseudonymiser: Pseudonymiser | bytes,
        authority_org: str,
        *,
        purpose: str = RESEARCH_PURPOSE,
        classes: tuple[str, ...] = COHORT_CLASSES,
    ) -> None:
        self.client = consent_client
        # bytes: the linkage key of a region without the pseudonymisation authority
        self.pseudonymiser = (
            LinkageKeyPseudonymiser(pseudonymiser)
            if isinstance(pseudonymiser, bytes)
            else pseudonymiser
        )
        self.authority_org = authority_org
        self.purpose = purpose
        self.classes = classes

    def eligible(self, patient: Mapping[str, Any]) -> bool:
        found = national_id_with_system(patient)
        if not found:
            return False
        try:
            # after a key rotation the patient's research consent stays under the pseudonym
            # they enrolled with: offer every held version's, the registry decides under the
            # one it knows (issue 23)
            current, *older = self.pseudonymiser.candidates(found)
            decision = self.client.decide(
                current,
                self.authority_org,
                self.purpose,
                list(self.classes),
                **({"candidates": older} if older else {}),
            )
        except Exception as exc:  # noqa: BLE001 - any failure is a deny
            log.warning("consent decision failed (%s); patient excluded", type(exc).__name__)
            return False
        return bool(decision.permit) and set(self.classes) <= set(decision.classes or ())


class BackendTokenSource:
    """SMART Backend Services: an access token from the node for a registered client key."""

    def __init__(self, base_url: str, client_id: str, key_path: Path | str, scope: str) -> None:
        from trust.tokens import load_or_create_signing_key

        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        path = Path(key_path)
        if not path.exists():
            raise FileNotFoundError(f"backend client key {path} not found")
        self.key = load_or_create_signing_key(path)
        self.scope = scope

    def token(self, http: httpx.Client) -> str:
        from trust.tokens import TokenIssuer

        token_url = f"{self.base_url}/auth/token"
        assertion = TokenIssuer(self.client_id, self.key, default_ttl=60).issue(
            self.client_id, token_url
        )
        r = http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
                "scope": self.scope,
            },
        )
        if r.status_code != 200:
            raise PermissionError(
                f"node refused the backend client ({r.status_code}): {r.text[:200]}"
            )
        return str(r.json()["access_token"])


@dataclass
class Cohort:
    samples: list[Sample] = field(default_factory=list)
    patients_seen: int = 0
    patients_eligible: int = 0
    eligible_patient_ids: list[str] = field(default_factory=list)


class FhirCohortReader:
    def __init__(
        self,
        base_url: str,
        tokens: BackendTokenSource,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        page_size: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.http = httpx.Client(timeout=timeout, verify=verify)
        self.page_size = page_size
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def _get(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self.tokens.token(self.http)
            r = self.http.get(
                url,
                params=params,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Accept": "application/fhir+json",
                },
            )
            if r.status_code == 401 and attempt == 1:
                self._token = None  # expired: get a new one
                continue
            if r.status_code != 200:
                raise RuntimeError(f"GET {r.request.url.path} answered {r.status_code}")
            return dict(r.json())
        raise RuntimeError("unreachable")

    def _pages(self, url: str, params: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        page: dict[str, Any] | None = self._get(url, params)
        while page is not None:
            for entry in page.get("entry", []) or []:
                if "resource" in entry:
                    yield entry["resource"]
            nxt = next(
                (lk["url"] for lk in page.get("link", []) if lk.get("relation") == "next"), None
            )
            page = self._get(nxt) if nxt else None

    def patients(self) -> Iterator[dict[str, Any]]:
        yield from self._pages(f"{self.base_url}/fhir/Patient", {"_count": self.page_size})

    def everything(self, patient_id: str) -> list[dict[str, Any]]:
        return list(
            self._pages(
                f"{self.base_url}/fhir/Patient/{patient_id}/$everything",
                {"_count": 500},
            )
        )

    def cohort(
        self,
        eligibility: EligibilityChecker,
        *,
        as_of: datetime | None = None,
        include_unlabelled: bool = False,
    ) -> Cohort:
        out = Cohort()
        for patient in self.patients():
            out.patients_seen += 1
            if not eligibility.eligible(patient):
                continue
            out.patients_eligible += 1
            pid = str(patient.get("id"))
            out.eligible_patient_ids.append(pid)
            out.samples += extract_samples(
                [patient, *self.everything(pid)], as_of=as_of, include_unlabelled=include_unlabelled
            )
        log.info(
            "cohort: %d patients seen, %d eligible, %d samples",
            out.patients_seen,
            out.patients_eligible,
            len(out.samples),
        )
        return out
