"""Must-show 4: HL7 v2 over a real MLLP socket into a real FhirStore (SQLite and PostgreSQL).

An ORU^R01 becomes Observations + a DiagnosticReport and is answered AA; a repeat adds nothing;
a broken message is answered AE/AR and the store's counts are unchanged; a message the store
refuses (ambiguous patient match) is answered AE and none of its entries is stored.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import hl7
import pytest

from node.feeds.hl7v2 import mllp_listener, send_mllp, store_submitter
from node.feeds.hl7v2.framing import MllpDecoder, frame
from node.identity import NATIONAL_ID_SYSTEM
from node.store import FhirStore
from node_feeds.hl7_samples import NATIONAL_ID, OBX_CREAT, OBX_GLUCOSE, adt, oru

HOST = "127.0.0.1"


def ack_code(ack: str) -> str:
    return str(hl7.parse(ack).segment("MSA")[1])


def run_with_server(
    store: FhirStore,
    client: Callable[[int], Any],
    *,
    max_message_bytes: int = 1 << 20,
) -> Any:
    """Start the MLLP listener on an ephemeral port, run the blocking ``client(port)`` in a
    thread (a real TCP client), stop the listener, return what the client returned."""

    async def main() -> Any:
        async with mllp_listener(
            HOST, 0, store_submitter(store), max_message_bytes=max_message_bytes
        ) as server:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.to_thread(client, port)

    return asyncio.run(main())


def patient_id(store: FhirStore) -> str:
    result = store.search("Patient", [("identifier", f"{NATIONAL_ID_SYSTEM}|{NATIONAL_ID}")])
    assert result.total == 1
    return str(result.resources[0]["id"])


def test_oru_over_mllp_is_stored_and_acknowledged(store: FhirStore) -> None:
    before = store.counts()
    ack = run_with_server(store, lambda port: send_mllp(HOST, port, oru()))
    assert ack_code(ack) == "AA"
    assert str(hl7.parse(ack).segment("MSA")[2]) == "MSG00042"
    after = store.counts()
    assert after.get("Observation", 0) - before.get("Observation", 0) == 4
    assert after.get("DiagnosticReport", 0) - before.get("DiagnosticReport", 0) == 1
    assert after.get("Patient", 0) - before.get("Patient", 0) == 1

    pid = patient_id(store)
    glucose = store.search("Observation", [("patient", pid), ("code", "http://loinc.org|2345-7")])
    assert glucose.total == 1
    obs = glucose.resources[0]
    assert obs["valueQuantity"]["value"] == 128
    assert obs["valueQuantity"]["code"] == "mg/dL"
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    report = store.search("DiagnosticReport", [("patient", pid)]).resources[0]
    assert len(report["result"]) == 4
    assert all(r["reference"].startswith("Observation/") for r in report["result"])

    # the same message again (a sender retry) adds nothing
    again = run_with_server(store, lambda port: send_mllp(HOST, port, oru()))
    assert ack_code(again) == "AA"
    assert store.counts() == after


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (oru(OBX_GLUCOSE, OBX_CREAT.replace("|1.42|", "|one point four|")), "AE"),
        (oru(OBX_GLUCOSE.replace("2345-7^Glucose^LN", "")), "AE"),
        (oru(pid="PID|1||||Novak^Anna"), "AE"),
        (oru().replace("ORU^R01^ORU_R01", "ORM^O01"), "AR"),
        (oru().replace("|P|2.5.1", "|P|2.0"), "AR"),
        ("PID|garbage without a header", "AR"),
    ],
)
def test_broken_message_is_refused_and_stores_nothing(
    store: FhirStore, message: str, expected: str
) -> None:
    run_with_server(store, lambda port: send_mllp(HOST, port, adt("A01")))  # some prior data
    before = store.counts()
    ack = run_with_server(store, lambda port: send_mllp(HOST, port, message))
    assert ack_code(ack) == expected
    assert str(hl7.parse(ack).segment("ERR")[8])  # the reason is named
    assert store.counts() == before


def test_store_refusal_is_ae_and_the_transaction_is_atomic(store: FhirStore) -> None:
    # two Patients share the national id → the conditional create is ambiguous → store refuses
    for family in ("Novak", "Nowak"):
        store.create(
            {
                "resourceType": "Patient",
                "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}],
                "name": [{"family": family}],
            }
        )
    before = store.counts()
    ack = run_with_server(store, lambda port: send_mllp(HOST, port, oru()))
    assert ack_code(ack) == "AE"
    assert "store refused" in str(hl7.parse(ack).segment("MSA")[3])
    assert store.counts() == before


def exchange(port: int, payload: bytes, expected_acks: int, chunk: int | None = None) -> list[str]:
    decoder = MllpDecoder()
    acks: list[str] = []
    with socket.create_connection((HOST, port), timeout=10) as sock:
        if chunk:
            for i in range(0, len(payload), chunk):
                sock.sendall(payload[i : i + chunk])
        else:
            sock.sendall(payload)
        while len(acks) < expected_acks:
            data = sock.recv(65536)
            assert data, "connection closed early"
            acks += [f.payload.decode() for f in decoder.feed(data)]
    return acks


def test_several_messages_per_connection_in_small_pieces(store: FhirStore) -> None:
    messages = [adt("A01", 1), oru(), oru(OBX_GLUCOSE.replace("|128|", "|x|")), adt("A03", 2)]
    stream = b"".join(frame(m.encode()) for m in messages)
    acks = run_with_server(store, lambda port: exchange(port, stream, 4, chunk=7))
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AE", "AA"]
    assert [str(hl7.parse(a).segment("MSA")[2]) for a in acks] == [
        "ADT1",
        "MSG00042",
        "MSG00042",
        "ADT2",
    ]
    encounters = store.search("Encounter", [("patient", patient_id(store))])
    assert encounters.total == 1
    assert encounters.resources[0]["status"] == "finished"


def test_oversize_message_is_rejected_and_the_connection_continues(store: FhirStore) -> None:
    big = oru(*[OBX_GLUCOSE] * 200)
    stream = frame(big.encode()) + frame(adt("A01").encode())
    acks = run_with_server(store, lambda port: exchange(port, stream, 2), max_message_bytes=4096)
    assert [ack_code(a) for a in acks] == ["AR", "AA"]
    assert store.counts().get("Observation", 0) == 0
    assert store.counts()["Encounter"] == 1
