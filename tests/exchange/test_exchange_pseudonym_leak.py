"""Issue 23, must-show 1 (first attack): with only a node's state — its database, its
configuration and every key file it is configured with — a pseudonym cannot be reversed by
brute force over a small national-id space, because no key that makes pseudonyms is there.

A real region (registry, pseudonymisation authority, coordinator, one hospital node as
processes). Hospital A seeds a patient whose national id lies in a block of 1,000 the attacker
knows (a known region code and birth date are as narrow, issue 23). The attacker knows the
patient's pseudonym (the coordinator's locator and the registry hold it) and copies the node's
state: every file in its data folder and every file or folder its configuration names. Every
secret-looking value in them (hex strings of ≥ 32 digits, short files) is tried as the HMAC key
of the pre-OPRF scheme and, where it is a valid scalar, as the authority's OPRF key, against
all 1,000 candidates. Before issue 23's OPRF the node's ``linkage.key`` reverses it at once.
The node's persistent pseudonym store (``node_pseudonyms``: key version, SHA-256 of the OPRF
input, pseudonym) is part of the loot, its digests and pseudonyms tried as keys with the rest;
it holds no key.

What the stolen state still allows is *online* guessing: the node's credentials can ask the
authority within its budget — a burst of 200 (a fifth of the block), then 300 an hour, kept in
the authority's database across restarts, each call audited — until the organisation is revoked
(``tests/trust/test_pseudonym_service.py`` shows the 429 for a 1,000-candidate burst, the spend
surviving a restart, and the revocation).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange_net import Region, patient_bundle, seed, start_region

from node.identity import NATIONAL_ID_SYSTEM
from trust import oprf
from trust.pseudonym import normalise_identifier, oprf_input, oprf_pseudonym

pytestmark = pytest.mark.slow

BLOCK = "HF-1949-"  # the attacker knows the first part; 1,000 candidates remain
TARGET = BLOCK + "0731"
_HEX = re.compile(rb"[0-9a-fA-F]{32,}")


@pytest.fixture(scope="module")
def region(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:  # type: ignore[no-untyped-def]
    net = start_region(pki, tmp_path_factory.mktemp("leak"), nodes=(("hosp-a", "tertiary"),))
    try:
        seed(net.nodes["hosp-a"], patient_bundle(TARGET, name="Ottilie Brennessel"))
        # the node publishes its patients' pseudonyms to the locator (as the attacker assumes),
        # obtaining them from the authority and keeping them in its pseudonym store
        assert net.nodes["hosp-a"].post("/exchange/publish", {}).status_code == 200
        yield net
    finally:
        net.stop()


def _node_state(region: Region) -> list[Path]:
    """Every file of the node: its data folder and whatever its configuration points at."""
    node = region.nodes["hosp-a"]
    roots = [node.data_dir]
    for value in node.env.values():
        path = Path(value)
        if value.startswith("/") and path.exists():
            roots.append(path)
    files: set[Path] = set()
    for root in roots:
        files.update([root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()])
    return sorted(files)


def _key_candidates(files: list[Path]) -> set[bytes]:
    keys: set[bytes] = set()
    for path in files:
        data = path.read_bytes()
        if 16 <= len(data) <= 64:
            keys.add(data)
        for token in _HEX.findall(data):
            for width in (64, 32):  # a 32- or 16-byte key written as hex, anywhere in the text
                keys.update(
                    bytes.fromhex(token[i : i + width].decode())
                    for i in range(0, len(token) - width + 1, 2)
                )
            if len(token) % 2 == 0 and len(token) <= 128:
                keys.add(bytes.fromhex(token.decode()))
    return keys


def _reverse(pseudonym: str, keys: set[bytes]) -> str | None:
    candidates = [f"{BLOCK}{i:04d}" for i in range(1000)]
    for key in keys:
        if len(key) >= 16:  # the pre-OPRF scheme: HMAC-SHA256(linkage key, national id)
            for nid in candidates:
                digest = hmac.new(key, normalise_identifier(nid).encode(), hashlib.sha256)
                if digest.hexdigest() == pseudonym:
                    return nid
        if len(key) == oprf.SCALAR_BYTES:  # the authority's OPRF key, were it here
            try:
                oprf.public_key(key)
            except oprf.OprfError:
                continue
            version = pseudonym.split(".", 1)[0][1:] if pseudonym.startswith("v") else "1"
            for nid in candidates:
                out = oprf.evaluate(key, oprf_input(NATIONAL_ID_SYSTEM, nid))
                if oprf_pseudonym(int(version), out) == pseudonym:
                    return nid
    return None


def test_a_leaked_node_cannot_reverse_a_pseudonym(region: Region) -> None:
    pseudonym = region.pseudonym(TARGET)  # what the locator and the registry hold
    files = _node_state(region)
    assert any(p.name == "node.db" for p in files)  # the database is part of the loot
    with sqlite3.connect(region.nodes["hosp-a"].data_dir / "node.db") as db:  # ... with the
        stored = db.execute(
            "SELECT input_digest, pseudonym, key_fingerprint FROM node_pseudonyms"
        ).fetchall()
    assert any(p == pseudonym for _, p, _ in stored), stored  # node's store of pseudonyms in it
    keys = _key_candidates(files)
    assert keys  # the attacker has material to try (token keys, ids, hashes…)
    # ...the authority's key fingerprint (its public key) among them: it reveals no key either
    assert {bytes.fromhex(fp) for _, _, fp in stored} <= keys
    assert _reverse(pseudonym, keys) is None, "the node's state reverses a pseudonym"


def test_the_attack_finds_a_key_wherever_one_is_in_the_loot(region: Region, tmp_path: Path) -> None:
    """Positive controls: the same harness, given a state that does hold a pseudonym key,
    reverses the pseudonym — so the test above passes because no key is there, not because the
    attack cannot find one. (a) The authority's own data folder (its OPRF key). (b) A node of
    the pre-OPRF scheme, its ``linkage.key`` among its files."""
    pseudonym = region.pseudonym(TARGET)
    authority_files = [p for p in (region.root / "pseudonym").rglob("*") if p.is_file()]
    assert _reverse(pseudonym, _key_candidates(authority_files)) == TARGET

    from trust.pseudonym import load_or_create_linkage_key
    from trust.pseudonym import pseudonym as hmac_pseudonym

    old_node = tmp_path / "old-node"
    old_node.mkdir()
    key = load_or_create_linkage_key(old_node / "linkage.key")
    old_files = [*_node_state(region), old_node / "linkage.key"]
    assert _reverse(hmac_pseudonym(key, TARGET), _key_candidates(old_files)) == TARGET
