"""What a refused patient request would have written, for the "stores nothing" checks."""

from __future__ import annotations

from patient.region_harness import Region


def stored(region: Region, *types: str) -> dict[str, int]:
    """How many resources of ``types`` the region's node holds. Not the whole store: the node's
    care worker writes in the background (the responsible doctor's Practitioner soon after the
    region starts, alerts after earlier readings), so whole-store counts race with it."""
    counts = region.store.counts()
    return {t: counts.get(t, 0) for t in types}
