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
        "sign-request", ca, sent, "--org", "org-clinic", "--host", "node-clinic",
        "--host", "10.0.0.7", "--out", reply,
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
            ca, request.read_bytes(), org_id="org-a", hosts="node-a",
            out_dir=tmp_path / f"r{_round}", ca_passphrase=b"ca secret",
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
            ca, change(request), org_id=org, hosts=["node-a"], out_dir=tmp_path / "out",
            ca_passphrase=b"ca secret",
        )  # fmt: skip
    assert _issued_count(ca) == before
    assert not (tmp_path / "out").exists()


def test_accept_refuses_certificates_for_other_keys_and_changes_nothing(
    ca: Path, tmp_path: Path
) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    make_request(mine, "org-a", host="node-a")
    theirs = make_request(other, "org-a", host="node-a")
    sign_request(
        ca, theirs.read_bytes(), org_id="org-a", hosts="node-a", out_dir=tmp_path / "reply",
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


def _request_naming(sans: list[str], org: str = "org-a") -> bytes:
    """A well-formed request (valid proofs of possession) whose TLS part names ``sans``, however
    the organisation's tool would have refused them — what a modified client can send."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    def name(usage: str) -> x509.Name:
        oid = x509.oid.NameOID
        return x509.Name(
            [
                x509.NameAttribute(oid.ORGANIZATION_NAME, org),
                x509.NameAttribute(oid.ORGANIZATIONAL_UNIT_NAME, usage),
                x509.NameAttribute(oid.COMMON_NAME, org),
            ]
        )

    enc = x25519.X25519PrivateKey.generate().public_key()
    raw = enc.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tls = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name("tls"))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in sans]), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    signing = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name("signing"))
        .add_extension(x509.UnrecognizedExtension(ENCRYPTION_KEY_OID, raw), critical=False)
        .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384())
    )
    return tls.public_bytes(serialization.Encoding.PEM) + signing.public_bytes(
        serialization.Encoding.PEM
    )


@pytest.mark.parametrize(
    ("sans", "expected", "error"),
    [
        (["*"], ["node-a"], "wildcard hosts are never certified: \\*"),
        (["node-a", "*.region.example"], ["node-a"], "wildcard hosts are never certified"),
        (["pseudonym-authority"], ["node-a"], "extra pseudonym-authority; missing node-a"),
        (["node-a", "consent-registry"], ["node-a"], "extra consent-registry\\)"),
        (["node-a"], ["node-a", "10.0.0.7"], "missing 10.0.0.7\\)"),
    ],
    ids=["wildcard", "wildcard-beside", "another-service", "extra-san", "missing-host"],
)
def test_the_ca_certifies_only_the_hosts_its_operator_expects(
    ca: Path, tmp_path: Path, sans: list[str], expected: list[str], error: str
) -> None:
    """Before the request flow the operator typed --host at issue time; a request's hosts are
    the organisation's claim, and a node certified for `pseudonym-authority` or `*` could stand
    in for the authority towards every node (the OPRF client trusts the regional CA by name)."""
    before = _issued_count(ca)
    with pytest.raises(PkiError, match=error):
        sign_request(
            ca, _request_naming(sans), org_id="org-a", hosts=expected,
            out_dir=tmp_path / "out", ca_passphrase=b"ca secret",
        )  # fmt: skip
    assert _issued_count(ca) == before
    assert not (tmp_path / "out").exists()


def test_sign_request_cli_needs_the_expected_hosts_and_refuses_an_extra_one(
    ca: Path, tmp_path: Path
) -> None:
    sent = tmp_path / "request.pem"
    sent.write_bytes(_request_naming(["node-a", "consent-registry"]))
    reply = tmp_path / "reply"
    base = ["sign-request", str(ca), str(sent), "--org", "org-a", "--out", str(reply)]
    env = {"CA_PASS": "ca secret"}
    before = _issued_count(ca)
    # --host is required: the operator must say which hosts it identified
    missing = runner.invoke(pki_app, [*base, "--ca-passphrase-env", "CA_PASS"], env=env)
    assert missing.exit_code == 2
    assert "--host" in missing.output
    refused = runner.invoke(
        pki_app, [*base, "--host", "node-a", "--ca-passphrase-env", "CA_PASS"], env=env
    )
    assert refused.exit_code == 1
    assert "extra consent-registry" in refused.output
    assert _issued_count(ca) == before
    assert not reply.exists()
    # the same hosts, in another order and case, sign
    sent.write_bytes(_request_naming(["node-a", "10.0.0.7"]))
    done = runner.invoke(
        pki_app, [*base, "--host", "10.0.0.7,NODE-A", "--ca-passphrase-env", "CA_PASS"], env=env
    )
    assert done.exit_code == 0, done.output
    assert _issued_count(ca) == before + 3


def test_an_organisation_cannot_even_request_a_wildcard(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="wildcard"):
        make_request(tmp_path / "org", "org-a", host="node-a,*.example")
    assert not (tmp_path / "org" / "pending").exists()
