"""Regional PKI: issuing, loading, and every way a certificate must be refused (must-show 2)."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.launcher import ipjms_command
from trust.certificates import CertificateError, verify_peer_certificate
from trust.pki import (
    PkiError,
    init_ca,
    issue_org,
    load_org,
    reissue_crl,
    revocation_list,
    revoke,
    revoked_orgs,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", now=NOW - dt.timedelta(days=60))
    reissue_crl(tmp_path / "ca")  # the CA's schedule keeps the CRL current
    return tmp_path / "ca"


def test_issued_org_has_the_promised_shape(ca: Path) -> None:
    creds = issue_org(ca, "clinic-b", host="127.0.0.1,localhost")
    org_dir = ca / "orgs" / "clinic-b"
    tls = x509.load_pem_x509_certificate(creds.tls_cert_pem)
    assert tls.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "clinic-b"
    san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:ipjms:org:clinic-b" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.cert.pem").read_bytes())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("tls.key.pem", "signing.key.pem", "encryption.key.pem"):
        assert stat.S_IMODE(os.stat(org_dir / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca / "ca.key.pem").st_mode) == 0o600
    loaded = load_org(org_dir)
    assert loaded.org_id == "clinic-b"
    assert loaded.encryption_public_key.public_bytes_raw() == (
        creds.encryption_public_key.public_bytes_raw()
    )
    # each certificate verifies for its own usage and only that one
    for usage, pem in (
        ("tls", creds.tls_cert_pem),
        ("signing", creds.signing_cert_pem),
        ("encryption", creds.encryption_cert_pem),
    ):
        assert verify_peer_certificate(pem, creds.ca_cert_pem, usage=usage) == "clinic-b"
    with pytest.raises(CertificateError, match="wrong key usage"):
        verify_peer_certificate(creds.encryption_cert_pem, creds.ca_cert_pem, usage="tls")
    with pytest.raises(CertificateError, match="wrong key usage"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, usage="signing")
    with pytest.raises(CertificateError, match="wrong key usage"):
        verify_peer_certificate(creds.signing_cert_pem, creds.ca_cert_pem, usage="encryption")


def test_certificate_from_another_ca_refused(ca: Path, tmp_path: Path) -> None:
    creds = issue_org(ca, "clinic-b")
    init_ca(tmp_path / "evil", name="IPJMS Regional CA")  # same name, different key
    forged = issue_org(tmp_path / "evil", "clinic-b")
    with pytest.raises(CertificateError, match="regional CA"):
        verify_peer_certificate(forged.tls_cert_pem, creds.ca_cert_pem)
    init_ca(tmp_path / "other", name="Some Other CA")
    foreign = issue_org(tmp_path / "other", "clinic-b")
    with pytest.raises(CertificateError, match="foreign issuer"):
        verify_peer_certificate(foreign.tls_cert_pem, creds.ca_cert_pem)


def test_expired_and_not_yet_valid_refused(ca: Path, tmp_path: Path) -> None:
    old = issue_org(ca, "clinic-old", days=10, now=NOW - dt.timedelta(days=30))
    with pytest.raises(CertificateError, match="expired"):
        verify_peer_certificate(old.tls_cert_pem, old.ca_cert_pem)
    fresh = issue_org(ca, "clinic-new", out_dir=tmp_path / "new")
    with pytest.raises(CertificateError, match="not yet valid"):
        verify_peer_certificate(
            fresh.tls_cert_pem, fresh.ca_cert_pem, now=NOW - dt.timedelta(days=1)
        )


def test_a_verified_certificate_is_still_checked_for_time_and_revocation(ca: Path) -> None:
    """The signature, names and usage of given bytes are worked out once (issue 19: ~0.5 ms per
    gRPC call); the validity period and the revocations are checked at every call."""
    from trust.certificates import _facts_of_pem

    creds = issue_org(ca, "clinic-t", days=10)
    assert verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem) == "clinic-t"
    hits = _facts_of_pem.cache_info().hits
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(CertificateError, match="expired"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, now=later)
    serial = x509.load_pem_x509_certificate(creds.tls_cert_pem).serial_number
    with pytest.raises(CertificateError, match="has been revoked"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, revoked={serial})
    with pytest.raises(CertificateError, match="wrong key usage"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, usage="signing")
    assert _facts_of_pem.cache_info().hits == hits + 2  # the same bytes and usage, not re-verified


def test_revoked_org_refused_everywhere(ca: Path) -> None:
    creds = issue_org(ca, "clinic-b")
    other = issue_org(ca, "clinic-c")
    assert verify_peer_certificate(
        creds.tls_cert_pem, creds.ca_cert_pem, revoked=revocation_list(ca)
    )
    revoke(ca, "clinic-b")
    revoked = revocation_list(ca)
    assert revoked_orgs(ca) == {"clinic-b"}
    for usage, pem in (("tls", creds.tls_cert_pem), ("signing", creds.signing_cert_pem)):
        with pytest.raises(CertificateError, match="revoked"):
            verify_peer_certificate(pem, creds.ca_cert_pem, revoked=revoked, usage=usage)  # type: ignore[arg-type]
    # by the org id alone (e.g. a verifier that has the directory but not the CRL)
    with pytest.raises(CertificateError, match="organisation clinic-b has been revoked"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, revoked={"clinic-b"})
    assert verify_peer_certificate(other.tls_cert_pem, other.ca_cert_pem, revoked=revoked) == (
        "clinic-c"
    )
    with pytest.raises(PkiError, match="revoked"):
        issue_org(ca, "clinic-b")


def test_rotation_old_and_new_verify_until_old_revoked_by_serial(ca: Path) -> None:
    old = issue_org(ca, "hosp-a")
    new = issue_org(ca, "hosp-a")  # rotation: same org dir, old material archived
    assert old.tls_cert_pem != new.tls_cert_pem
    for c in (old, new):
        assert verify_peer_certificate(c.tls_cert_pem, c.ca_cert_pem, revoked=revocation_list(ca))
    loaded = load_org(ca / "orgs" / "hosp-a")
    assert loaded.tls_cert_pem == new.tls_cert_pem
    assert [k.public_key().public_bytes_raw() for k in loaded.previous_encryption_keys] == [
        old.encryption_public_key.public_bytes_raw()
    ]
    old_serial = x509.load_pem_x509_certificate(old.tls_cert_pem).serial_number
    revoke(ca, serial=old_serial)
    revoked = revocation_list(ca)
    with pytest.raises(CertificateError, match="serial"):
        verify_peer_certificate(old.tls_cert_pem, old.ca_cert_pem, revoked=revoked)
    assert verify_peer_certificate(new.tls_cert_pem, new.ca_cert_pem, revoked=revoked) == "hosp-a"
    assert revoked_orgs(ca) == frozenset()


def test_tampered_crl_is_not_trusted(ca: Path, tmp_path: Path) -> None:
    issue_org(ca, "clinic-b")
    revoke(ca, "clinic-b")
    init_ca(tmp_path / "evil")
    (ca / "ca.crl.pem").write_bytes((tmp_path / "evil" / "ca.crl.pem").read_bytes())
    with pytest.raises(CertificateError, match="CRL"):
        revocation_list(ca)


def test_passphrase_protected_keys(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", passphrase=b"ca secret")
    with pytest.raises(PkiError, match="passphrase"):
        issue_org(tmp_path / "ca", "clinic-b")
    issue_org(tmp_path / "ca", "clinic-b", passphrase=b"org secret", ca_passphrase=b"ca secret")
    org_dir = tmp_path / "ca" / "orgs" / "clinic-b"
    assert b"ENCRYPTED" in (org_dir / "signing.key.pem").read_bytes()
    with pytest.raises(PkiError, match="passphrase"):
        load_org(org_dir)
    assert load_org(org_dir, passphrase=b"org secret").org_id == "clinic-b"


def test_services_open_passphrase_protected_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: every service loads its keys through load_org(dir) — the runtime path reads
    the passphrase from a mounted file or the environment, and says what to set otherwise."""
    init_ca(tmp_path / "ca")
    issue_org(tmp_path / "ca", "clinic-b", passphrase=b"org secret")
    org_dir = tmp_path / "ca" / "orgs" / "clinic-b"
    monkeypatch.delenv("IPJMS_KEY_PASSPHRASE", raising=False)
    monkeypatch.delenv("IPJMS_KEY_PASSPHRASE_FILE", raising=False)
    with pytest.raises(PkiError, match="IPJMS_KEY_PASSPHRASE"):
        load_org(org_dir)
    monkeypatch.setenv("IPJMS_KEY_PASSPHRASE", "org secret")
    assert load_org(org_dir).org_id == "clinic-b"
    secret = tmp_path / "pw"
    secret.write_text("org secret\n")
    monkeypatch.setenv("IPJMS_KEY_PASSPHRASE", "wrong")
    monkeypatch.setenv("IPJMS_KEY_PASSPHRASE_FILE", str(secret))  # the file wins
    assert load_org(org_dir).org_id == "clinic-b"


def test_bad_org_id_refused(ca: Path) -> None:
    with pytest.raises(CertificateError, match="invalid organisation id"):
        issue_org(ca, "../etc")


def test_cli_init_issue_revoke(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    env = {**os.environ, "CA_PW": "s3cret", "ORG_PW": "0rg"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ipjms_command("pki", *args), capture_output=True, text=True, env=env, timeout=60
        )

    assert run("init-ca", str(ca), "--passphrase-env", "CA_PW").returncode == 0
    res = run(
        "issue", str(ca), "--org", "clinic-b", "--host", "localhost", "--out", str(tmp_path / "b"),
        "--passphrase-env", "ORG_PW", "--ca-passphrase-env", "CA_PW",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    creds = load_org(tmp_path / "b", passphrase=b"0rg")
    assert verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem) == "clinic-b"
    bad = run("issue", str(ca), "--org", "x", "--ca-passphrase-env", "NOPE_UNSET")
    assert bad.returncode == 2 and "NOPE_UNSET" in bad.stderr
    res = run("revoke", str(ca), "--org", "clinic-b", "--ca-passphrase-env", "CA_PW")
    assert res.returncode == 0, res.stderr
    with pytest.raises(CertificateError, match="revoked"):
        verify_peer_certificate(creds.tls_cert_pem, creds.ca_cert_pem, revoked=revocation_list(ca))


def _fresh_ca(tmp_path: Path, name: str = "ca") -> Path:
    init_ca(tmp_path / name)
    issue_org(tmp_path / name, "clinic-b")
    return tmp_path / name


def test_missing_crl_refuses_every_certificate(tmp_path: Path) -> None:
    """Attack (issue 23): deleting the CRL used to mean "nothing revoked"."""
    ca = _fresh_ca(tmp_path)
    revoke(ca, "clinic-b")
    (ca / "ca.crl.pem").unlink()
    with pytest.raises(CertificateError, match="no CRL"):
        revocation_list(ca)


def test_stale_crl_refused_until_the_ca_reissues_it(tmp_path: Path) -> None:
    """Attack (issue 23): a CRL 53 days past its nextUpdate was accepted (nextUpdate never
    read). Past nextUpdate + grace it now refuses; the CA's scheduled re-issue restores it."""
    ca = tmp_path / "ca"
    init_ca(ca, now=NOW - dt.timedelta(days=60))  # CRL nextUpdate = 53 days ago
    with pytest.raises(CertificateError, match="stale"):
        revocation_list(ca)
    assert revocation_list(ca, now=NOW - dt.timedelta(days=55)) == frozenset()  # was fresh then
    assert reissue_crl(ca, if_older_than=dt.timedelta(days=1)) is not None
    assert revocation_list(ca) == frozenset()
    assert reissue_crl(ca, if_older_than=dt.timedelta(days=1)) is None  # recent: left alone
    crl = x509.load_pem_x509_crl((ca / "ca.crl.pem").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_crl_rollback_refused(tmp_path: Path) -> None:
    """A CA-signed but older CRL (lower cRLNumber) — say, the one before a revocation — is
    refused once a newer one was seen, though its signature and dates are fine."""
    ca = _fresh_ca(tmp_path)
    before = (ca / "ca.crl.pem").read_bytes()
    assert "clinic-b" not in revocation_list(ca)
    revoke(ca, "clinic-b")
    assert "clinic-b" in revocation_list(ca)
    (ca / "ca.crl.pem").write_bytes(before)
    with pytest.raises(CertificateError, match="rollback"):
        revocation_list(ca)


def test_cli_reissue_crl(tmp_path: Path) -> None:
    ca = _fresh_ca(tmp_path)
    run = [*ipjms_command("pki", "reissue-crl", str(ca))]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "re-issued" in done.stdout, done.stderr
    later = subprocess.run(
        [*run, "--older-than-hours", "24"], capture_output=True, text=True, timeout=120
    )
    assert later.returncode == 0 and "not re-issued" in later.stdout
