"""The PKI's TLS certificates work for real gRPC mutual TLS (BoringSSL), and the peer's
organisation is read from the handshake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from trust.certificates import CertificateError
from trust.pki import OrgCredentials, init_ca, issue_org, revocation_list, revoke
from trust.tls import (
    channel_credentials,
    org_id_from_peer_cert,
    peer_org_id,
    pin_server_org,
    server_credentials,
)

METHOD = "/ipjms.test.Echo/Who"


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[tuple[Path, OrgCredentials, int, list[Any]]]:
    from concurrent import futures

    ca = tmp_path / "ca"
    init_ca(ca)
    server_creds = issue_org(ca, "coordinator", host="127.0.0.1,localhost")
    seen: list[Any] = []

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            org = peer_org_id(
                context, ca_cert_pem=server_creds.ca_cert_pem, revoked=revocation_list(ca)
            )
        except CertificateError as exc:
            seen.append(exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        seen.append(org)
        return org.encode()

    handler = grpc.method_handlers_generic_handler(
        "ipjms.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(who, lambda b: b, lambda b: b)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(server_creds))
    server.start()
    try:
        yield ca, server_creds, port, seen
    finally:
        server.stop(None)


def _call(creds: OrgCredentials, port: int) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(creds)) as channel:
        stub = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return stub(b"", timeout=10)


def test_mutual_tls_names_the_calling_org(
    mtls: tuple[Path, OrgCredentials, int, list[Any]],
) -> None:
    ca, server_creds, port, _seen = mtls
    client = issue_org(ca, "clinic-b")
    assert _call(client, port) == b"clinic-b"
    assert org_id_from_peer_cert(client.tls_cert_pem) == "clinic-b"


def test_foreign_ca_client_fails_the_handshake(
    mtls: tuple[Path, OrgCredentials, int, list[Any]], tmp_path: Path
) -> None:
    _ca, _server_creds, port, seen = mtls
    init_ca(tmp_path / "evil")
    evil = issue_org(tmp_path / "evil", "clinic-b")
    with pytest.raises(grpc.RpcError) as err:
        _call(evil, port)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == []  # never reached the handler


def test_revoked_client_is_refused_after_the_handshake(
    mtls: tuple[Path, OrgCredentials, int, list[Any]],
) -> None:
    ca, _server_creds, port, seen = mtls
    client = issue_org(ca, "clinic-c")
    assert _call(client, port) == b"clinic-c"
    revoke(ca, "clinic-c")
    with pytest.raises(grpc.RpcError) as err:
        _call(client, port)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in str(seen[-1])


def test_a_client_pinned_to_an_organisation_refuses_another_orgs_server(
    mtls: tuple[Path, OrgCredentials, int, list[Any]],
) -> None:
    """Attack (issue 23): any organisation's certificate from the regional CA, valid for the
    host dialled, used to pass for the coordinator; pinned to the coordinator's organisation,
    the handshake refuses it."""
    from concurrent import futures

    ca, _server_creds, port, _seen = mtls
    client = issue_org(ca, "clinic-b")
    options = pin_server_org("coordinator")
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(client), options) as ch:
        stub = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        assert stub(b"", timeout=10) == b"clinic-b"  # the real coordinator passes
    impostor = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.method_handlers_generic_handler(
        "ipjms.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(lambda b, c: b"x", lambda b: b, lambda b: b)},
    )
    impostor.add_generic_rpc_handlers((handler,))
    fake = issue_org(ca, "hosp-x", host="127.0.0.1,localhost")  # same CA, same host
    fake_port = impostor.add_secure_port("127.0.0.1:0", server_credentials(fake))
    impostor.start()
    try:
        with grpc.secure_channel(f"127.0.0.1:{fake_port}", channel_credentials(client)) as ch:
            stub = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            assert stub(b"", timeout=10) == b"x"  # unpinned: the impostor is believed
        with grpc.secure_channel(
            f"127.0.0.1:{fake_port}", channel_credentials(client), options
        ) as ch:
            stub = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as refused:
                stub(b"", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        impostor.stop(None)
    with pytest.raises(Exception, match="org.ipjms.invalid"):
        issue_org(ca, "hosp-y", host="coordinator.org.ipjms.invalid")
