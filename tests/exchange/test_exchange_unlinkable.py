"""Issue 23, must-show 2: the coordinator holds nothing that links one patient's envelopes to
different recipients — no shared pseudonym, consent reference or other identifier, no exact size.

One patient of hospital A is referred to clinic B and to clinic C through the real network
(registry, coordinator, nodes as processes, mutual TLS); a second patient's referral to B is the
control. The recipients start only after the three envelopes are queued, so the test can open the
queued ciphertexts with the recipients' keys and learn their exact sizes. After delivery it scans
every table and column of the coordinator's database, its log file and its ``/metrics`` text.

A value *links* the two envelopes when it is found with both (in a row or log line that names the
envelope id) and not with the control's: what every referral from A carries (sender, kind,
purpose, class names, the replica's id) is shared with the control and links nothing. The audit
ledger's ``hash``/``prev_hash`` chain every entry to the one before, whoever the patient is, so
they are not compared. Timing is not in scope (the envelopes are sent seconds apart).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exchange_net import Region, patient_bundle, seed, start_region, wait_for
from sqlalchemy import inspect, select

from servicekit.storage import make_engine, sqlite_url
from trust.envelopes import SealedEnvelope, open_from

pytestmark = pytest.mark.slow

CLASSES = ["Patient", "Condition", "Observation", "MedicationStatement", "ServiceRequest"]
NID, NAME = "HF-1949-2323", "Adelgunde Kieselbach"  # referred to B and to C
NID_CONTROL, NAME_CONTROL = "HF-1962-7171", "Rosalinde Pfefferkorn"  # referred to B only
# identifier-like values: hex digests and pseudonyms, UUIDs, base64url tokens
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")
_NUMBER = re.compile(r"(?<![\w.])\d{3,9}(?![\w.])")
# a UUID's groups are not numbers held: '4442' and '8187' in bb89f276-b661-4442-8187-7d7b1b3f9ed5
# once matched an exact size (CI of ff39637)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def _numbers(text: str) -> set[int]:
    """The whole numbers written in ``text``, UUIDs left out."""
    return {int(n) for n in _NUMBER.findall(_UUID.sub(" ", text))}


_CHAIN_COLUMNS = {("audit_ledger", "hash"), ("audit_ledger", "prev_hash")}


def _refer(a: Any, nid: str, recipient: str) -> str:
    r = a.post(
        "/exchange/requests",
        {"kind": "referral", "patient": f"Patient/p-{nid}", "recipient": recipient,
         "reason": "follow-up near home"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "sent", r.json()
    return str(r.json()["envelope_id"])


def _coordinator_rows(region: Region) -> list[tuple[str, dict[str, Any]]]:
    engine = make_engine(sqlite_url(region.coordinator.data_dir, "coordinator"))
    try:
        meta = inspect(engine)
        from sqlalchemy import MetaData, Table

        rows: list[tuple[str, dict[str, Any]]] = []
        with engine.connect() as conn:
            for name in meta.get_table_names():
                table = Table(name, MetaData(), autoload_with=conn)
                rows += [(name, dict(r._mapping)) for r in conn.execute(select(table))]
        return rows
    finally:
        engine.dispose()


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return "" if value is None else str(value)


def _row_values(table: str, row: dict[str, Any]) -> tuple[set[str], set[int]]:
    """Identifier-like tokens and whole numbers held in one row (JSON text is scanned as text,
    which reaches every value inside it)."""
    tokens: set[str] = set()
    numbers: set[int] = set()
    for column, value in row.items():
        if (table, column) in _CHAIN_COLUMNS:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            numbers.add(value)
        text = _text(value)
        tokens |= set(_TOKEN.findall(text))
        numbers |= _numbers(text)
    return tokens, numbers


def _held_with(
    envelope_id: str, rows: list[tuple[str, dict[str, Any]]], log_lines: list[str]
) -> tuple[set[str], set[int]]:
    """Everything the coordinator keeps in a row or log line naming ``envelope_id``."""
    tokens: set[str] = set()
    numbers: set[int] = set()
    for table, row in rows:
        if any(envelope_id in _text(v) for v in row.values()):
            t, n = _row_values(table, row)
            tokens |= t
            numbers |= n
    for line in log_lines:
        if envelope_id in line:
            tokens |= set(_TOKEN.findall(line))
            numbers |= _numbers(line)
    return tokens - {envelope_id}, numbers


def _padme(n: int) -> int:
    """Padmé (Nikitin et al., PETS 2019), written out here rather than imported: the bucket
    ``n`` bytes are padded to, keeping floor(log2 floor(log2 n)) + 1 significant bits."""
    e = n.bit_length() - 1
    mask = (1 << (e - e.bit_length())) - 1
    return (n + mask) & ~mask


def _exact_sizes(region: Region, envelope_id: str) -> set[int]:
    """Open the queued envelope as its recipient would and return the sizes that would give
    its payload's length away: the payload's and the ciphertext's length, and the sealed
    envelope's, each give or take the 17 bytes of a padding marker and a GCM tag. When the
    payload happens to fill a bucket exactly (padding then adds only the marker) the stored
    lengths are allowed: they are a bucket like any other."""
    rows = [r for t, r in _coordinator_rows(region) if t == "envelopes"]
    (row,) = [r for r in rows if r["envelope_id"] == envelope_id]
    sealed = bytes(row["sealed"])
    env = SealedEnvelope.from_bytes(sealed)
    creds = region.pki.creds
    payload = len(
        open_from(
            env,
            recipient=creds[env.header.recipient],
            sender_signing_cert_pem=creds[env.header.sender].signing_cert_pem,
        )
    )
    overhead = len(sealed) - len(env.ciphertext)  # framing, header, key, nonce, signature
    ciphertexts = range(payload + 16, payload + 34)
    exact = set(range(payload, payload + 18)) | set(ciphertexts)
    exact |= {overhead + c for c in ciphertexts}
    if _padme(payload + 1) == payload + 1:
        exact -= {len(sealed), len(env.ciphertext), len(env.ciphertext) - 16}
    return exact


@pytest.fixture(scope="module")
def scanned(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    region = start_region(
        pki, tmp_path_factory.mktemp("unlinkable"), nodes=(("hosp-a", "tertiary"),)
    )
    try:
        a = region.nodes["hosp-a"]
        for nid, name, recipients in (
            (NID, NAME, ("clinic-b", "clinic-c")),
            (NID_CONTROL, NAME_CONTROL, ("clinic-b",)),
        ):
            seed(a, patient_bundle(nid, name=name))
            pseudo = region.pseudonym(nid)
            region.grant(region.patient_token(pseudo), pseudo, dict.fromkeys(recipients, CLASSES))
        to_b, to_c = _refer(a, NID, "clinic-b"), _refer(a, NID, "clinic-c")
        control = _refer(a, NID_CONTROL, "clinic-b")
        exact = {e: _exact_sizes(region, e) for e in (to_b, to_c, control)}
        region.start_node("clinic-b", "community")
        region.start_node("clinic-c", "community")

        def delivered() -> bool:
            states = {
                r["envelope_id"]: r["state"]
                for t, r in _coordinator_rows(region)
                if t == "envelopes"
            }
            return all(states.get(e) == "delivered" for e in exact)

        wait_for(delivered, timeout=60, what="the three referrals delivered")
        rows = _coordinator_rows(region)
        log_path: Path = region.coordinator.service.log_path
        log_lines = log_path.read_text(errors="replace").splitlines()
        metrics = httpx.get(f"{region.coordinator.http_url}/metrics", timeout=30).text
        yield {
            "region": region,
            "ids": (to_b, to_c, control),
            "exact": exact,
            "held": {e: _held_with(e, rows, log_lines) for e in exact},
            "rows": rows,
            "log": "\n".join(log_lines),
            "metrics": metrics,
        }
    finally:
        region.stop()


def test_no_identifier_links_one_patients_envelopes_to_two_recipients(
    scanned: dict[str, Any],
) -> None:
    to_b, to_c, control = scanned["ids"]
    held = scanned["held"]
    tables = {t for t, _ in scanned["rows"]}
    assert {"envelopes", "routing_log", "audit_ledger"} <= tables  # the scan saw the stores
    # control of the scan itself: each envelope's rows were found and hold identifiers
    assert all(held[e][0] for e in (to_b, to_c, control))
    linking = (held[to_b][0] & held[to_c][0]) - held[control][0]
    assert not linking, f"values the coordinator holds for both envelopes of one patient: {linking}"
    regional = scanned["region"].pseudonym(NID)
    for where in ("log", "metrics"):
        assert regional not in scanned[where], f"the regional pseudonym is in the {where}"
    # the two envelopes' own pseudonyms are nowhere near the other envelope or the metrics
    for mine, other in ((to_b, to_c), (to_c, to_b)):
        own = {t for t in held[mine][0] if re.fullmatch(r"[0-9a-f]{64}", t)}
        assert own, f"no routing pseudonym found for {mine}"
        assert not own & held[other][0]
        assert not any(p in scanned["metrics"] for p in own)


def test_no_exact_size_of_a_payload_is_held(scanned: dict[str, Any]) -> None:
    numbers_in_metrics = _numbers(scanned["metrics"])
    for envelope_id, exact in scanned["exact"].items():
        numbers = scanned["held"][envelope_id][1]
        assert numbers, f"no numbers found with {envelope_id}: the scan missed its rows"
        assert not exact & numbers, f"exact sizes {exact & numbers} kept with {envelope_id}"
        assert not exact & numbers_in_metrics, f"exact sizes {exact} in the metrics"
