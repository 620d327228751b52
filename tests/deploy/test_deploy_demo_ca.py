"""The CA of `ipjms demo` / `ipjms up` keeps its key encrypted (issue 22: "the CA key is
unencrypted"), and signing without the passphrase fails with a clear error and changes nothing.

The bring-up is `deploy.up._regional_ca` — the function `ipjms up` calls before any service —
and the demo chapters take the same `deploy.demo.regional_ca` path (the last test checks that no
other demo/up module makes or uses a CA key itself)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.demo import regional_ca
from deploy.launcher import ipjms_command
from deploy.up import CA_SUBDIR, _regional_ca
from trust.certificate_requests import make_request
from trust.pki import CA_KEY, PkiError, init_ca, issue_org, load_org

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_passphrase_file_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(regional_ca.PASSPHRASE_FILE_ENV, raising=False)


def test_up_bring_up_writes_an_encrypted_ca_key_and_the_passphrase_beside_the_ca(
    tmp_path: Path,
) -> None:
    ca_dir = _regional_ca(tmp_path)
    assert ca_dir == tmp_path / CA_SUBDIR
    pem = (ca_dir / CA_KEY).read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key(pem, password=None)
    secret = tmp_path / "pki" / regional_ca.PASSPHRASE_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.parent == ca_dir.parent  # beside the CA folder, not in it
    passphrase = secret.read_bytes().strip()
    assert len(passphrase) >= 32
    for f in ca_dir.rglob("*"):
        assert not f.is_file() or passphrase not in f.read_bytes(), f
    serialization.load_pem_private_key(pem, password=passphrase)  # it is the key's passphrase
    # a second bring-up on the same work dir keeps key and passphrase
    _regional_ca(tmp_path)
    assert (ca_dir / CA_KEY).read_bytes() == pem
    assert secret.read_bytes().strip() == passphrase


def test_signing_without_the_passphrase_fails_clearly_and_issues_nothing(tmp_path: Path) -> None:
    ca_dir = _regional_ca(tmp_path)
    issued_before = sorted((ca_dir / "issued").iterdir())
    with pytest.raises(PkiError, match="passphrase"):
        issue_org(ca_dir, "org-x", host="127.0.0.1", out_dir=tmp_path / "org-x")
    assert not (tmp_path / "org-x").exists()
    # the CLI's sign-request, the organisation's request in hand, without --ca-passphrase-env
    request = make_request(tmp_path / "org-y", "org-y", host=["127.0.0.1"])
    out = tmp_path / "signed-y"
    env = {k: v for k, v in os.environ.items() if k != "IPJMS_CA_PASSPHRASE"}
    cmd = ipjms_command(
        "pki", "sign-request", str(ca_dir), str(request), "--org", "org-y", "--host", "127.0.0.1"
    )
    done = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1
    assert "wrong or missing passphrase" in done.stderr
    assert not out.exists() or not any(out.iterdir())
    assert sorted((ca_dir / "issued").iterdir()) == issued_before
    # ...and with it (the work dir's passphrase file), both paths sign
    env["IPJMS_CA_PASSPHRASE"] = (tmp_path / "pki" / regional_ca.PASSPHRASE_FILE).read_text()
    env["IPJMS_CA_PASSPHRASE"] = env["IPJMS_CA_PASSPHRASE"].strip()
    done = subprocess.run(
        [*cmd, "--out", str(out), "--ca-passphrase-env", "IPJMS_CA_PASSPHRASE"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    creds = regional_ca.issue(ca_dir, "org-x", host="127.0.0.1", out_dir=tmp_path / "org-x")
    assert load_org(tmp_path / "org-x").org_id == creds.org_id == "org-x"


def test_a_work_dir_with_a_plain_ca_key_gets_it_encrypted_in_place(tmp_path: Path) -> None:
    ca_dir = tmp_path / CA_SUBDIR
    init_ca(ca_dir)  # as ipjms up/demo made it before
    plain = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    _regional_ca(tmp_path)
    pem = (ca_dir / CA_KEY).read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((ca_dir / CA_KEY).stat().st_mode) == 0o600
    passphrase = regional_ca.ca_passphrase(ca_dir)
    again = serialization.load_pem_private_key(pem, password=passphrase)
    assert again.public_key().public_numbers() == plain.public_key().public_numbers()  # type: ignore[union-attr]


def test_an_empty_or_missing_named_passphrase_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(regional_ca.PASSPHRASE_FILE_ENV, str(tmp_path / "absent"))
    with pytest.raises(PkiError, match="does not exist"):
        _regional_ca(tmp_path)
    assert not (tmp_path / CA_SUBDIR / CA_KEY).exists()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv(regional_ca.PASSPHRASE_FILE_ENV, str(tmp_path / "empty"))
    with pytest.raises(PkiError, match="empty"):
        _regional_ca(tmp_path)
    assert not (tmp_path / CA_SUBDIR / CA_KEY).exists()


def test_every_demo_and_up_signing_goes_through_the_encrypted_ca() -> None:
    """One place makes and uses the local CA key: a chapter calling init_ca/issue_org/
    reissue_crl/crl_schedule without the passphrase would sign with (or create) a plain key."""
    offenders = []
    files = [REPO / "deploy" / "up.py", *sorted((REPO / "deploy" / "demo").glob("*.py"))]
    for path in files:
        if path.name == "regional_ca.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"\b(init_ca|issue_org)\(", text):
            offenders.append(f"{path.name}: {m.group(0)}")
        calls = r"\breissue_crl\([^)]*\)|target=crl_schedule,.*?\)\s*\.start\(\)"
        for m in re.finditer(calls, text, re.S):
            if "ca_passphrase" not in m.group(0):
                offenders.append(f"{path.name}: {m.group(0)[:40]}")
    assert offenders == []
