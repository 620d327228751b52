"""Which of a patient's pseudonyms the registry knows them by (issue 23, after a key rotation).

The registry keeps a patient's consents and account under the pseudonym they enrolled with,
``v<key version>.<hex>``. After the pseudonymisation authority rotates its key, a node's current
pseudonym for the patient is of the new version, which the registry has never seen. So a node
offers, with its question, the patient's pseudonym under every older version the authority still
holds — its own OPRF evaluations of the identifier it holds (``OprfPseudonymiser.candidates``) —
and the registry decides under the one the patient is known by:

1. among the offered pseudonyms that have consents here, the newest key version;
2. else among those with a patient account (enrolled, no consent yet), the newest;
3. else the one asked about (``patient``: the node's current one) — no consent, default deny.

Nothing of this is stored: no link between two pseudonyms is kept, each question is decided
under exactly one pseudonym (named in the signed decision, ``sub``; audited in that patient's
ledger only), and a question with candidates answers nothing a caller could not learn by asking
under each of them separately. The registry cannot verify that the candidates are one person's
(it cannot compute the OPRF); why that gives a caller no new power is in
``docs/architecture.md`` ("The registry after a rotation").
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, select

from consent.schema import consents, patients
from trust.pseudonym import pseudonym_key_version

__all__ = ["known_by"]


def _newest(found: set[str]) -> str:
    return max(found, key=lambda p: pseudonym_key_version(p) or 0)


def known_by(engine: Engine, patient: str, candidates: Sequence[str]) -> str:
    """The pseudonym among ``patient`` and ``candidates`` the registry knows the patient by
    (see the module's rule); ``patient`` when there are no candidates or none is known."""
    if not candidates:
        return patient
    offered = [patient, *candidates]
    with engine.connect() as conn:
        consented: set[str] = set(
            conn.execute(
                select(consents.c.patient).where(consents.c.patient.in_(offered)).distinct()
            ).scalars()
        )
        if consented:
            return _newest(consented)
        enrolled: set[str] = set(
            conn.execute(
                select(patients.c.pseudonym).where(patients.c.pseudonym.in_(offered))
            ).scalars()
        )
    return _newest(enrolled) if enrolled else patient
