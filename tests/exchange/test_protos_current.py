"""The committed gRPC stubs are what protos/generate.py produces from the .proto files today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _generate_module():
    spec = importlib.util.spec_from_file_location(
        "protos_generate", REPO_ROOT / "protos/generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    generate = _generate_module()
    written = generate.generate(tmp_path)
    assert written, "no proto files found"
    for fresh in written:
        committed = REPO_ROOT / "protos" / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is not committed; run `make protos`"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.relative_to(REPO_ROOT)} is stale; run `make protos` and commit"
        )


def test_stubs_import_by_package_path() -> None:
    from protos.ipjms.exchange.v1 import exchange_pb2, exchange_pb2_grpc

    envelope = exchange_pb2.Envelope(header=exchange_pb2.EnvelopeHeader(envelope_id="x"))
    assert exchange_pb2.Envelope.FromString(envelope.SerializeToString()) == envelope
    assert hasattr(exchange_pb2_grpc, "ExchangeStub")


def test_the_clear_header_message_reserves_what_left_it() -> None:
    """Issue 23: purpose, classes and consent reference are reserved in the header message (no
    later field may reuse their numbers or names), so an old sender's values are dropped as
    unknown, never read as something else."""
    from protos.ipjms.exchange.v1 import exchange_pb2

    fields = exchange_pb2.EnvelopeHeader.DESCRIPTOR.fields_by_name
    assert not {"purpose", "classes", "consent_ref"} & set(fields)
    proto = (REPO_ROOT / "protos/ipjms/exchange/v1/exchange.proto").read_text()
    assert 'reserved "purpose", "classes", "consent_ref";' in proto
    assert "reserved 6, 7, 8;" in proto


def test_the_lookup_request_reserves_what_left_it() -> None:
    """Issue 23 for the record locator: a lookup names only the pseudonym and the lookup id its
    registry decision is bound to; purpose, classes and the break-glass envelope are reserved."""
    from protos.ipjms.exchange.v1 import exchange_pb2

    fields = exchange_pb2.LookupRequest.DESCRIPTOR.fields_by_name
    assert set(fields) == {"patient_pseudonym", "lookup_id"}
    proto = (REPO_ROOT / "protos/ipjms/exchange/v1/exchange.proto").read_text()
    assert 'reserved "purpose", "classes", "break_glass_envelope";' in proto
    assert "reserved 2, 3, 4;" in proto
