"""Who is calling: the organisation named by the peer's mutual-TLS certificate.

gRPC's TLS handshake already refuses certificates from any other CA (the client sees
``UNAVAILABLE``); here we add what the handshake cannot know: the certificate must pass the
regional PKI's peer check (validity, usage, CRL), its organisation must be in the directory and
not revoked there, and — when the authority registered fingerprints — be one of those
certificates.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.directory import Directory, OrgRecord
from coordinator.errors import ExchangeError
from trust.certificates import CertificateError, pem_fingerprint
from trust.pki import revocation_list, verify_peer_certificate

__all__ = ["PeerAuthenticator"]


class PeerAuthenticator:
    def __init__(self, directory: Directory, *, ca_cert_pem: bytes, ca_dir: Path | None) -> None:
        self.directory = directory
        self.ca_cert_pem = ca_cert_pem
        self.ca_dir = ca_dir

    def _revocations(self) -> frozenset[str | int]:
        """The CA's revocation list (re-read by trust.pki whenever the CRL file changes). Fails
        closed: without a CA folder, or with a missing, stale or rolled-back CRL, nobody is
        identified (``UNAVAILABLE``: the caller retries once the CA has published a CRL)."""
        if self.ca_dir is None:
            raise ExchangeError("UNAVAILABLE", "no CRL configured: revocation status unknown")
        try:
            return revocation_list(self.ca_dir)
        except CertificateError as exc:
            raise ExchangeError("UNAVAILABLE", str(exc)) from None

    def identify(self, peer_cert_pem: bytes | None) -> OrgRecord:
        if not peer_cert_pem:
            raise ExchangeError("UNAUTHENTICATED", "a client certificate is required")
        revoked = self._revocations()
        try:
            org_id = verify_peer_certificate(peer_cert_pem, self.ca_cert_pem, revoked=revoked)
        except CertificateError as exc:
            code = "PERMISSION_DENIED" if "revoked" in str(exc) else "UNAUTHENTICATED"
            raise ExchangeError(code, f"certificate refused: {exc}") from None
        org = self.directory.get(org_id)
        if org is None:
            raise ExchangeError(
                "UNAUTHENTICATED", f"organisation {org_id} is not registered in the directory"
            )
        if org.revoked:
            raise ExchangeError("PERMISSION_DENIED", f"organisation {org_id} has been revoked")
        # The certificate is parsed once (its fingerprint cached by its bytes); the CRL, the
        # validity period and the directory are still read on every call, so a revocation
        # applies to the very next one.
        if org.cert_fingerprints and (
            pem_fingerprint(bytes(peer_cert_pem)) not in org.cert_fingerprints
        ):
            raise ExchangeError(
                "UNAUTHENTICATED",
                f"this certificate of {org_id} is not the one registered in the directory",
            )
        return org
