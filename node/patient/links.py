"""Which local Patient a signed-in patient is: the regional pseudonym → Patient id, through the
linkage key (``trust/pseudonym.py``).

The registry knows the patient only by pseudonym (``HMAC(linkage key, national id)``); this node
holds the linkage key and its patients' national identifiers. :meth:`PatientLinks.resolve`
looks, in order, in

1. the remembered links (``node_patient_links``),
2. Patients carrying the pseudonym as an identifier (records imported through the exchange),
3. every Patient's national identifier, pseudonymised (once per unknown pseudonym; what it
   finds is remembered) — under the key version the pseudonym itself names (``v<N>.``, the
   authority's OPRF): the registry's token carries the pseudonym the patient enrolled with,
   which after a key rotation (issue 23) is an older version than the node's current one. The
   node's pseudonym store keeps every version's pseudonyms it handed out; the ones it lacks are
   asked of the authority by number (once each: then kept), or, when it does not answer (e.g.
   a version it no longer holds), only the stored ones are compared.

A pseudonym found nowhere is remembered as absent for a minute (a patient this node does not
hold signs in elsewhere; repeated requests must not rescan the store).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from node.identity import national_identifier_with_system, patient_pseudonyms
from node.patient.tables import patient_links
from node.store import identifier_criteria
from trust.oprf_client import PseudonymServiceError
from trust.pseudonym import IdentifierError, pseudonym_key_version

__all__ = ["PatientLinks", "PSEUDONYM_SYSTEM"]

PSEUDONYM_SYSTEM = "https://ipjms.example.org/fhir/sid/patient-pseudonym"
_ABSENT_FOR = 60.0
_PAGE = 500


class PatientLinks:
    def __init__(self, engine: Engine, store: Any, pseudonymiser: Any) -> None:
        self.engine = engine
        self.store = store
        self.pseudonymiser = pseudonymiser
        self._absent: dict[str, float] = {}
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def resolve(self, pseudonym: str) -> str | None:
        if pseudonym in self._known:
            return self._known[pseudonym]
        with self._lock:
            if self._absent.get(pseudonym, 0.0) > time.monotonic():
                return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(patient_links.c.patient_id).where(patient_links.c.pseudonym == pseudonym)
            ).first()
        found = str(row.patient_id) if row is not None else self._find(pseudonym)
        with self._lock:
            if found is None:
                if len(self._absent) > 10_000:
                    self._absent.clear()
                self._absent[pseudonym] = time.monotonic() + _ABSENT_FOR
                return None
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[pseudonym] = found
        if row is None:
            self.remember(pseudonym, found)
        return found

    def remember(self, pseudonym: str, patient_id: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(patient_links).values(pseudonym=pseudonym, patient_id=patient_id)
                )
        except IntegrityError:
            pass  # another worker remembered it first

    def _find(self, pseudonym: str) -> str | None:
        crit = identifier_criteria(PSEUDONYM_SYSTEM, pseudonym)
        hit = self.store.search("Patient", [("identifier", crit.split("=", 1)[1]), ("_count", "1")])
        if hit.resources:
            return str(hit.resources[0]["id"])
        offset = 0
        while True:
            page = self.store.search("Patient", [("_count", str(_PAGE)), ("_offset", str(offset))])
            found = self._pseudonyms(page.resources, pseudonym_key_version(pseudonym))
            for patient, pseudo in zip(page.resources, found, strict=True):
                if pseudo == pseudonym:
                    return str(patient["id"])
            offset += len(page.resources)
            if not page.resources or offset >= page.total:
                return None

    def _pseudonyms(self, patients: list[dict[str, Any]], version: int | None) -> list[str | None]:
        """The patients' pseudonyms under key ``version`` (None: not an OPRF pseudonym, or a
        pseudonymiser without versions — the linkage key's — whose only ones are its own)."""
        at = getattr(self.pseudonymiser, "regional_at", None)
        if version is None or at is None:
            return patient_pseudonyms(patients, self.pseudonymiser)
        ids: list[tuple[str, str] | None] = []
        for patient in patients:
            try:
                ids.append(national_identifier_with_system(patient))
            except IdentifierError:
                ids.append(None)
        asked = [i for i in ids if i is not None]
        try:
            got = at(asked, version)
        except PseudonymServiceError:  # unreachable, or a version it no longer holds
            got = at(asked, version, ask=False)
        answers = iter(got)
        return [next(answers) if i is not None else None for i in ids]
