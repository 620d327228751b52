"""Pseudonym aliases after a key rotation of the pseudonymisation authority (issue 23).

The registry keeps a patient under the pseudonym they enrolled with (``v1.…``). After the
authority rotates its key, nodes ask with the patient's new pseudonym (``v2.…``), which the
registry cannot relate to the old one: that needs the identifier, which only nodes hold. So the
node that enrolled the patient computes both (it asks the authority for the old version by
number) and registers the pair (:func:`register_aliases`, ``POST /pseudonym-aliases``); from
then on :func:`canonical` resolves the new pseudonym to the enrolled one at every entry point
that takes a patient pseudonym ($decide, $recheck, consent create/search, disclosures, login,
enrolment codes).

**Trust rule.** A pair ``(old, new)`` is accepted only from the organisation that enrolled the
patient ``old`` resolves to (``consent_patients.enrolled_by``): the registry cannot check that
``old`` and ``new`` are one person, so it believes the one organisation that introduced that
person to it. Consents exist only for enrolled patients (granting needs a patient login), so the
rule covers every patient whose consents could be lost. Other checks: ``new``'s key version is
newer than ``old``'s; ``new`` has no registry state of its own (no enrolment, no consent); an
alias already mapped elsewhere is a conflict. A batch is all or nothing: any conflict is a 409
and nothing of the batch is written. A pair whose ``old`` the caller did not enrol — unknown
here, or enrolled by someone else, answered alike so the answer tells no node where else its
patient enrolled — is *skipped*: nothing is written for it (the node sends all its patients
and cannot know which of them enrolled).

What a dishonest enrolling node could do: point some *other* person's new pseudonym at a patient
it enrolled, so decisions about that person would follow this patient's consents — but only
while that person's new pseudonym has no registry state, and only onto its own enrolled
patients; the person's own enrolling node later finds its pair refused (409), which shows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from consent.model import check_pseudonym
from consent.schema import consents, patients, pseudonym_aliases
from servicekit.outcome import BadRequest, Conflict

__all__ = ["canonical", "register_aliases", "AliasReport", "MAX_PAIRS", "key_version"]

#: pairs in one request (a node sends its patients in batches of at most 100)
MAX_PAIRS = 500
_VERSIONED = re.compile(r"^v([0-9]{1,9})\.[0-9a-f]{64}$")


def key_version(pseudonym: str) -> int | None:
    """The authority key version a pseudonym names (``v<N>.<64 hex>``), else None."""
    m = _VERSIONED.match(pseudonym)
    return int(m.group(1)) if m else None


def canonical(conn_or_engine: Engine | Any, pseudonym: str) -> str:
    """The pseudonym the registry keeps this patient under: the alias's canonical one, or the
    pseudonym itself. The one resolution every entry point taking a patient pseudonym uses."""
    query = select(pseudonym_aliases.c.canonical).where(pseudonym_aliases.c.alias == pseudonym)
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            found = conn.execute(query).scalar_one_or_none()
    else:
        found = conn_or_engine.execute(query).scalar_one_or_none()
    return str(found) if found is not None else pseudonym


@dataclass(frozen=True)
class AliasReport:
    mapped: int  # new aliases written
    already: int  # pairs already registered exactly so (idempotent)
    skipped: int  # pairs whose old pseudonym the caller did not enrol: nothing written

    def as_json(self) -> dict[str, int]:
        return {"mapped": self.mapped, "already": self.already, "skipped": self.skipped}


def parse_pairs(body: object) -> list[tuple[str, str]]:
    """``{"pairs": [{"old": …, "new": …}, …]}`` → pairs, checked (400 on anything wrong)."""
    if not isinstance(body, dict) or set(body) != {"pairs"}:
        raise BadRequest('body must be {"pairs": [{"old": "<v1.…>", "new": "<v2.…>"}, …]}')
    raw = body["pairs"]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("pairs must be a non-empty list", expression=["pairs"])
    if len(raw) > MAX_PAIRS:
        raise BadRequest(f"at most {MAX_PAIRS} pairs in one request", expression=["pairs"])
    out: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        where = f"pairs[{i}]"
        if not isinstance(item, dict) or set(item) != {"old", "new"}:
            raise BadRequest(f'{where} must be {{"old": …, "new": …}}', expression=[where])
        old = check_pseudonym(item["old"], f"{where}.old")
        new = check_pseudonym(item["new"], f"{where}.new")
        v_old, v_new = key_version(old), key_version(new)
        if v_old is None or v_new is None:
            raise BadRequest(
                f"{where}: both pseudonyms must name their key version (v<N>.<64 hex>)",
                expression=[where],
            )
        if v_new <= v_old:
            raise BadRequest(
                f"{where}: the new pseudonym's key version ({v_new}) must be newer than the "
                f"old one's ({v_old})",
                expression=[where],
            )
        out.append((old, new))
    return out


def register_aliases(
    engine: Engine, pairs: Sequence[tuple[str, str]], *, caller: str
) -> AliasReport:
    """Register ``new`` as an alias of the patient ``old`` names, for the pairs whose patient
    ``caller`` enrolled — all in one transaction, or (409) none of them. See the module's trust
    rule."""
    mapped = already = skipped = 0
    seen: dict[str, str] = {}
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            for old, new in pairs:
                root = canonical(conn, old)
                enrolled_by = conn.execute(
                    select(patients.c.enrolled_by).where(patients.c.pseudonym == root)
                ).scalar_one_or_none()
                if enrolled_by != caller:  # unknown, or another organisation's patient
                    skipped += 1
                    continue
                existing = conn.execute(
                    select(pseudonym_aliases.c.canonical).where(pseudonym_aliases.c.alias == new)
                ).scalar_one_or_none()
                if existing is None:
                    existing = seen.get(new)
                if existing is not None:
                    if existing != root:
                        raise Conflict(
                            "a new pseudonym of the batch is already an alias of another "
                            "patient; nothing of the batch was registered"
                        )
                    already += 1
                    continue
                if new == root or _has_state(conn, new):
                    raise Conflict(
                        "a new pseudonym of the batch already has registry state of its own "
                        "(an enrolment or consents); nothing of the batch was registered"
                    )
                conn.execute(
                    insert(pseudonym_aliases).values(
                        alias=new, canonical=root, registered_by=caller, created_at=now
                    )
                )
                seen[new] = root
                mapped += 1
    except IntegrityError:  # a concurrent batch registered one of them first
        raise Conflict("a concurrent request registered one of these aliases; ask again") from None
    return AliasReport(mapped, already, skipped)


def _has_state(conn: Any, pseudonym: str) -> bool:
    enrolled = conn.execute(
        select(patients.c.pseudonym).where(patients.c.pseudonym == pseudonym)
    ).first()
    if enrolled is not None:
        return True
    consented = conn.execute(
        select(consents.c.id).where(consents.c.patient == pseudonym).limit(1)
    ).first()
    return consented is not None
