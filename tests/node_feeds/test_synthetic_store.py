"""Synthetic cohorts go into a real FhirStore: every Bundle is accepted, per-type counts match,
and seeding again adds nothing."""

from __future__ import annotations

from collections import Counter

from node.feeds.synthetic import generate_site
from node.identity import NATIONAL_ID_SYSTEM
from node.store import FhirStore, migrate
from servicekit.storage import make_engine


def test_seeding_is_accepted_and_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    store = FhirStore(engine)
    bundles = list(generate_site("community", 3, 1, shared=2, population_seed=4))
    expected = Counter(e["resource"]["resourceType"] for b in bundles for e in b["entry"])
    for bundle in bundles:
        store.transaction(bundle)
    assert store.counts() == dict(expected)
    for bundle in bundles:
        response = store.transaction(bundle)
        assert all(e["response"]["status"].startswith("200") for e in response["entry"])
    assert store.counts() == dict(expected)

    # the shared people are found by national identifier, with their whole record linked
    national_id = next(
        i["value"]
        for i in bundles[0]["entry"][0]["resource"]["identifier"]
        if i["system"] == NATIONAL_ID_SYSTEM
    )
    found = store.search("Patient", [("identifier", f"{NATIONAL_ID_SYSTEM}|{national_id}")])
    assert found.total == 1
    everything = store.everything(found.resources[0]["id"])
    assert everything.total == len(bundles[0]["entry"])
    engine.dispose()
