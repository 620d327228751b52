"""The coordinator's peer check (coordinator/peers.py, a promise of coordinator/README.md): where
the authority registered certificate fingerprints, only those certificates identify the
organisation — a second, equally CA-valid certificate of the same organisation is refused; an
organisation registered without fingerprints accepts any of its CA-valid certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.directory import Directory
from coordinator.errors import ExchangeError
from coordinator.peers import PeerAuthenticator
from coordinator.registration import record_from_credentials
from coordinator.server import open_database
from trust.pki import init_ca, issue_org

Peers = tuple[PeerAuthenticator, Directory, dict[str, bytes]]


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir)
    first = tmp_path / "first"
    issue_org(ca_dir, "org-clinic", out_dir=first)
    second = tmp_path / "second"  # re-issued: same organisation, same CA, another key
    issue_org(ca_dir, "org-clinic", out_dir=second)
    directory = Directory(open_database(f"sqlite:///{tmp_path / 'coordinator.db'}"))
    directory.register(record_from_credentials(first, name="Clinic", level="community"))
    auth = PeerAuthenticator(
        directory, ca_cert_pem=(ca_dir / "ca.cert.pem").read_bytes(), ca_dir=ca_dir
    )
    certs = {
        "first": (first / "tls.cert.pem").read_bytes(),
        "second": (second / "tls.cert.pem").read_bytes(),
    }
    return auth, directory, certs


def test_only_the_registered_certificate_identifies_the_organisation(peers: Peers) -> None:
    auth, directory, certs = peers
    assert directory.get("org-clinic").cert_fingerprints  # type: ignore[union-attr]
    assert auth.identify(certs["first"]).org_id == "org-clinic"
    with pytest.raises(ExchangeError) as refused:
        auth.identify(certs["second"])
    assert refused.value.code == "UNAUTHENTICATED"
    assert "not the one registered in the directory" in str(refused.value)


def test_without_registered_fingerprints_any_ca_valid_certificate_identifies(
    peers: Peers,
) -> None:
    auth, directory, certs = peers
    record = directory.get("org-clinic")
    assert record is not None
    record.cert_fingerprints = []
    directory.register(record)
    assert auth.identify(certs["second"]).org_id == "org-clinic"


def test_a_certificate_is_parsed_once_and_each_certificate_keeps_its_own_identity(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the fingerprint check no longer parses the peer's certificate on every call
    (cached by its bytes), yet the same certificate always gets the same answer and another
    certificate its own — and the directory is still read each time, so a revocation there
    applies to the very next call."""
    from cryptography import x509

    from trust.certificates import pem_fingerprint

    auth, directory, certs = peers
    assert auth.identify(certs["first"]).org_id == "org-clinic"  # parsed here, once
    parsed: list[bytes] = []
    load = x509.load_pem_x509_certificate

    def counting_load(data: bytes, *args: object) -> x509.Certificate:
        parsed.append(bytes(data))
        return load(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(x509, "load_pem_x509_certificate", counting_load)
    again = [auth.identify(certs["first"]) for _ in range(4)]
    assert {o.org_id for o in again} == {"org-clinic"}
    assert parsed.count(certs["first"]) == 0  # old code: parsed again on each of the four
    with pytest.raises(ExchangeError, match="not the one registered"):
        auth.identify(certs["second"])  # a different certificate: its own fingerprint
    with pytest.raises(ExchangeError, match="not the one registered"):
        auth.identify(certs["second"])  # and its cached fingerprint is still refused
    assert pem_fingerprint(certs["first"]) != pem_fingerprint(certs["second"])
    assert directory.set_revoked("org-clinic")
    with pytest.raises(ExchangeError) as revoked:
        auth.identify(certs["first"])  # the cached certificate does not hide the revocation
    assert revoked.value.code == "PERMISSION_DENIED"
