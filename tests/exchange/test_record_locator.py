"""The record locator's publish (coordinator/locator.py): a node's full list replaces what it
published under its newest key version; what it published under an older version (before a
key rotation) is kept, because nodes publish their newest version only — so that no list ever
pairs a patient's pseudonyms of two versions — and a pull decided under the older version
must still find the holders that knew the patient then (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from coordinator.errors import ExchangeError
from coordinator.locator import RecordLocator
from coordinator.schema import locator as table
from coordinator.server import open_database


def _p(version: int | None, n: int) -> str:
    digest = f"{n:064x}"
    return f"v{version}.{digest}" if version else digest


@pytest.fixture
def locator(tmp_path: Path) -> RecordLocator:
    return RecordLocator(open_database(f"sqlite:///{tmp_path / 'coordinator.db'}"))


def _held(locator: RecordLocator, org: str) -> set[str]:
    with locator.engine.connect() as conn:
        return set(
            conn.execute(select(table.c.patient_pseudonym).where(table.c.org_id == org)).scalars()
        )


def test_a_full_list_replaces_the_newest_version_and_keeps_older_ones(
    locator: RecordLocator,
) -> None:
    before = {_p(1, 1), _p(1, 2)}
    assert locator.publish("clinic-b", before, replace=True) == 2
    # after the rotation the node publishes v2 only: its v1 entries stay
    assert locator.publish("clinic-b", {_p(2, 1), _p(2, 2)}, replace=True) == 2
    assert _held(locator, "clinic-b") == before | {_p(2, 1), _p(2, 2)}
    # a patient gone from the node: its v2 entry goes, the v1 ones stay
    locator.publish("clinic-b", {_p(2, 1)}, replace=True)
    assert _held(locator, "clinic-b") == before | {_p(2, 1)}
    # another organisation's entries are never touched
    locator.publish("hosp-a", {_p(2, 9)}, replace=True)
    assert _held(locator, "clinic-b") == before | {_p(2, 1)}


def test_without_key_versions_a_full_list_replaces_everything(locator: RecordLocator) -> None:
    locator.publish("clinic-b", {_p(None, 1), _p(None, 2)}, replace=True)
    locator.publish("clinic-b", {_p(None, 2)}, replace=True)
    assert _held(locator, "clinic-b") == {_p(None, 2)}
    locator.publish("clinic-b", set(), replace=True)
    assert _held(locator, "clinic-b") == set()


def test_a_malformed_pseudonym_refuses_the_whole_publish(locator: RecordLocator) -> None:
    locator.publish("clinic-b", {_p(1, 1)}, replace=True)
    with pytest.raises(ExchangeError, match="malformed"):
        locator.publish("clinic-b", {_p(2, 1), "v2.not-hex"}, replace=True)
    assert _held(locator, "clinic-b") == {_p(1, 1)}
