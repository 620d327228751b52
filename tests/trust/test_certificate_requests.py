"""Organisations make their own keys and send certificate requests; the CA signs them without
ever holding an organisation's private key (issue 22, "Keys")."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from trust.certificate_requests import ENCRYPTION_KEY_OID, make_request, sign_request
from trust.certificates import org_id_of
from trust.cli import pki_app
from trust.pki import PkiError, load_org

runner = CliRunner()


def private_keys_under(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*.pem")
        if b"PRIVATE KEY-----" in p.read_bytes()
    )


def cli(*args: str | Path) -> str:
    result = runner.invoke(pki_app, [str(a) for a in args], env={"CA_PASS": "ca secret"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ca_dir = tmp_path / "authority" / "ca"
    cli("init-ca", ca_dir, "--passphrase-env", "CA_PASS")
    return ca_dir


def test_request_sign_accept_leaves_every_private_key_with_its_owner(
    ca: Path, tmp_path: Path
) -> None:
    org_dir = tmp_path / "clinic" / "credentials"
    cli("request", org_dir, "--org", "org-clinic", "--host", "node-clinic,10.0.0.7")
    request = org_dir / "pending" / "request.pem"
    assert private_keys_under(request.parent) == [
        "encryption.key.pem",
        "signing.key.pem",
        "tls.key.pem",
    ]
    assert b"PRIVATE" not in request.read_bytes()

    # what travels to the authority and back is public material only
    sent = tmp_path / "authority" / "inbox" / "org-clinic.request.pem"
    sent.parent.mkdir()
    sent.write_bytes(request.read_bytes())
    reply = tmp_path / "authority" / "outbox" / "org-clinic"
    out = cli(
        "sign-request", ca, sent, "--org", "org-clinic", "--out", reply,
        "--ca-passphrase-env", "CA_PASS",
    )  # fmt: skip
    assert "node-clinic, 10.0.0.7" in out
    authority = tmp_path / "authority"
    assert private_keys_under(authority) == ["ca/ca.key.pem"]
    ca_key = (ca / "ca.key.pem").read_bytes()
    assert ca_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    cli("accept", org_dir, reply)
    assert not (org_dir / "pending").exists()
    creds = load_org(org_dir)
    assert creds.org_id == "org-clinic"
    tls = x509.load_pem_x509_certificate(creds.tls_cert_pem)
    assert org_id_of(tls) == "org-clinic"
    san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-clinic" in san.get_values_for_type(x509.DNSName)
    # the encryption certificate certifies the key the organisation made
    enc = x509.load_pem_x509_certificate(creds.encryption_cert_pem)
    assert enc.public_key() == creds.encryption_key.public_key()
    issued = {p.name for p in (ca / "issued").iterdir()}
    assert {f"{int(s, 16):x}.pem" for s in _serials(org_dir)} <= issued


def _serials(org_dir: Path) -> list[str]:
    import json

    return list(json.loads((org_dir / "org.json").read_text())["serials"].values())


def test_a_second_request_rotates_and_keeps_the_old_encryption_key(
    ca: Path, tmp_path: Path
) -> None:
    org_dir = tmp_path / "org"
    for _round in range(2):
        request = make_request(org_dir, "org-a", host="node-a")
        sign_request(
            ca, request.read_bytes(), org_id="org-a", out_dir=tmp_path / f"r{_round}",
            ca_passphrase=b"ca secret",
        )  # fmt: skip
        cli("accept", org_dir, tmp_path / f"r{_round}")
    creds = load_org(org_dir)
    assert len(creds.previous_encryption_keys) == 1
    assert creds.previous_encryption_keys[0] != creds.encryption_key


def _issued_count(ca: Path) -> int:
    return len(list((ca / "issued").iterdir()))


def _tampered_signing_request(request: bytes) -> bytes:
    """The signing request with another X25519 key swapped into its extension (its signature
    then no longer verifies)."""
    tls_pem, sign_pem = request.split(b"-----END CERTIFICATE REQUEST-----")[:2]
    sign_csr = x509.load_pem_x509_csr(sign_pem + b"-----END CERTIFICATE REQUEST-----\n")
    der = bytearray(sign_csr.public_bytes(serialization.Encoding.DER))
    raw = sign_csr.extensions.get_extension_for_oid(ENCRYPTION_KEY_OID).value.value  # type: ignore[attr-defined]
    at = bytes(der).index(raw)
    der[at] ^= 0x01
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    return tls_pem + b"-----END CERTIFICATE REQUEST-----\n" + pem


def _p384_tls_request(_request: bytes) -> bytes:
    """The TLS request replaced by a valid one for org-a whose key is P-384, not P-256."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "org-a"),
            x509.NameAttribute(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME, "tls"),
            x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "org-a"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("node-a")]), critical=False)
        .sign(key, hashes.SHA384())
    )
    signing = _request.split(b"-----END CERTIFICATE REQUEST-----")[1]
    return (
        csr.public_bytes(serialization.Encoding.PEM)
        + signing
        + b"-----END CERTIFICATE REQUEST-----\n"
    )


@pytest.mark.parametrize(
    ("org", "change", "error"),
    [
        ("org-b", lambda r: r, "the request is for org-a, not org-b"),
        ("org-a", _tampered_signing_request, "signature does not verify"),
        ("org-a", _p384_tls_request, "the TLS key must be EC P-256"),
        ("org-a", lambda r: r.split(b"-----END CERTIFICATE REQUEST-----")[0], "one tls and one"),
        ("org-a", lambda r: b"not a request", "not a certificate request"),
    ],
    ids=["another-org", "tampered", "wrong-key-type", "signing-missing", "garbage"],
)
def test_a_bad_request_is_refused_and_nothing_is_issued(
    ca: Path, tmp_path: Path, org: str, change, error: str
) -> None:  # type: ignore[no-untyped-def]
    request = make_request(tmp_path / "org", "org-a", host="node-a").read_bytes()
    before = _issued_count(ca)
    with pytest.raises(PkiError, match=error):
        sign_request(
            ca, change(request), org_id=org, out_dir=tmp_path / "out", ca_passphrase=b"ca secret"
        )
    assert _issued_count(ca) == before
    assert not (tmp_path / "out").exists()


def test_accept_refuses_certificates_for_other_keys_and_changes_nothing(
    ca: Path, tmp_path: Path
) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    make_request(mine, "org-a", host="node-a")
    theirs = make_request(other, "org-a", host="node-a")
    sign_request(
        ca, theirs.read_bytes(), org_id="org-a", out_dir=tmp_path / "reply",
        ca_passphrase=b"ca secret",
    )  # fmt: skip
    before = sorted(p.name for p in (mine / "pending").iterdir())
    result = runner.invoke(pki_app, ["accept", str(mine), str(tmp_path / "reply")])
    assert result.exit_code == 1
    assert "not for this organisation's pending tls key" in result.output
    assert sorted(p.name for p in (mine / "pending").iterdir()) == before
    assert not (mine / "org.json").exists()


def test_a_pending_request_is_never_overwritten(tmp_path: Path) -> None:
    first = make_request(tmp_path / "org", "org-a", host="node-a").read_bytes()
    with pytest.raises(PkiError, match="already pending"):
        make_request(tmp_path / "org", "org-a", host="node-a")
    assert (tmp_path / "org" / "pending" / "request.pem").read_bytes() == first
