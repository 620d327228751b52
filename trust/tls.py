"""Mutual-TLS material for gRPC from an organisation's credentials.

gRPC's handshake checks the chain to the regional CA; it cannot know the CRL or the directory,
so a server must still call :func:`org_id_from_peer_cert` (with ``ca_cert_pem`` and ``revoked``)
on ``context.auth_context()["x509_pem_cert"][0]`` before trusting the caller. ``grpc`` is
imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from trust.certificates import load_certificate, org_dns_name, org_id_of, verify_peer_certificate

__all__ = [
    "TlsMaterial",
    "tls_material",
    "server_credentials",
    "channel_credentials",
    "org_id_from_peer_cert",
    "peer_org_id",
    "pin_server_org",
]


class TlsMaterial(NamedTuple):
    root_ca_pem: bytes
    cert_chain_pem: bytes
    private_key_pem: bytes


def tls_material(creds: Any) -> TlsMaterial:
    """(root CA, certificate chain, private key) PEMs of :class:`trust.pki.OrgCredentials`."""
    return TlsMaterial(creds.ca_cert_pem, creds.tls_cert_pem, creds.tls_key_pem)


def server_credentials(creds: Any) -> Any:
    """``grpc.ServerCredentials`` that require a client certificate from the regional CA."""
    import grpc

    m = tls_material(creds)
    return grpc.ssl_server_credentials(
        [(m.private_key_pem, m.cert_chain_pem)],
        root_certificates=m.root_ca_pem,
        require_client_auth=True,
    )


def pin_server_org(org_id: str) -> list[tuple[str, str]]:
    """gRPC channel options under which the handshake accepts only a server certificate of
    organisation ``org_id`` (its ``<org>.org.ipjms.invalid`` DNS SAN, issued by the CA) rather
    than any certificate of the CA valid for the host dialled."""
    return [("grpc.ssl_target_name_override", org_dns_name(org_id))]


def channel_credentials(creds: Any) -> Any:
    """``grpc.ChannelCredentials`` presenting the org's certificate, trusting only the CA."""
    import grpc

    m = tls_material(creds)
    return grpc.ssl_channel_credentials(
        root_certificates=m.root_ca_pem,
        private_key=m.private_key_pem,
        certificate_chain=m.cert_chain_pem,
    )


def org_id_from_peer_cert(
    pem: bytes | str,
    *,
    ca_cert_pem: bytes | None = None,
    revoked: Collection[str | int] = (),
) -> str:
    """The organisation of a peer's TLS certificate. With ``ca_cert_pem`` the full peer check
    (chain, validity, usage, revocation) runs; without it only the name is read — use that
    only where the TLS handshake already verified the chain and revocation does not matter."""
    if ca_cert_pem is not None:
        return verify_peer_certificate(pem, ca_cert_pem, revoked=revoked, usage="tls")
    return org_id_of(load_certificate(pem))


def peer_org_id(context: Any, *, ca_cert_pem: bytes, revoked: Collection[str | int] = ()) -> str:
    """The verified organisation behind a gRPC call (raises CertificateError)."""
    from trust.certificates import CertificateError

    certs = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        raise CertificateError("the peer presented no client certificate")
    return org_id_from_peer_cert(certs[0], ca_cert_pem=ca_cert_pem, revoked=revoked)
