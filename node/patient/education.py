"""Education items per care pathway (data: ``education/items.json``, zh-CN and en), assigned
by the patient's active CarePlans and marked read by the patient.

:func:`assigned` is pure: the items of every pathway a plan instantiates, in one language, with
the read marks given. The read marks live in ``node_patient_education_read`` (patient, item,
when) — a fact about the patient's reading, not a clinical record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["catalogue", "assigned", "item_ids", "LANGUAGES"]

LANGUAGES = ("zh-CN", "en")
_FILE = Path(__file__).parent / "education" / "items.json"


@cache
def catalogue() -> dict[str, list[dict[str, Any]]]:
    """Pathway URL → its education items."""
    return dict(json.loads(_FILE.read_text(encoding="utf-8"))["pathways"])


def item_ids() -> frozenset[str]:
    return frozenset(i["id"] for items in catalogue().values() for i in items)


def _pathways(plans: Iterable[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for plan in plans:
        for canonical in plan.get("instantiatesCanonical") or []:
            url = str(canonical).split("|", 1)[0]
            if url in catalogue() and url not in out:
                out.append(url)
    return out


def assigned(
    plans: Iterable[Mapping[str, Any]], read: Mapping[str, str], lang: str
) -> list[dict[str, Any]]:
    """The items the plans assign, in ``lang``, each with ``read_at`` (None if unread)."""
    lang = lang if lang in LANGUAGES else "zh-CN"
    out = []
    for url in _pathways(plans):
        for item in catalogue()[url]:
            out.append({"id": item["id"], "pathway": url, "topic": item["topic"],
                        "title": item["title"][lang], "body": item["body"][lang],
                        "source": item["source"], "read_at": read.get(item["id"])})  # fmt: skip
    return out
