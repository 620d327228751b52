"""`ipjms node serve --tls-cert/--tls-key`: the node API over HTTPS with the organisation's
regional TLS certificate (a real server process, a real TLS handshake)."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from deploy.launcher import ipjms_command, start_service, wait_healthy
from trust.pki import init_ca, issue_org


def _ipjms(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPJMS_ADMIN_PASSWORD": "admin-pass-for-tests", "COLUMNS": "200"}
    return subprocess.run(ipjms_command(*args), capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue_org(root / "ca", "org-tls", out_dir=root / "org-tls")
    return root / "ca", root / "org-tls"


def test_serves_https_verified_by_the_regional_ca(tmp_path: Path, pki: tuple[Path, Path]) -> None:
    ca_dir, org_dir = pki
    data_dir = tmp_path / "node"
    r = _ipjms("node", "init", "--org", "org-tls", "--name", "TLS Clinic", "--data-dir",
               str(data_dir))  # fmt: skip
    assert r.returncode == 0, r.stderr
    service = start_service(
        "node-https",
        ["node", "serve", "--data-dir", str(data_dir), "--port", "0",
         "--tls-cert", str(org_dir / "tls.cert.pem"), "--tls-key", str(org_dir / "tls.key.pem")],
        base_url="https://127.0.0.1:{http}",
        log_dir=tmp_path / "logs",
        wait=False,
        ports_dir=data_dir,
    )  # fmt: skip
    port = service.extra["ports"]["http"]
    try:
        ca_cert = str(ca_dir / "ca.cert.pem")
        wait_healthy(service, verify=ca_cert)
        r = httpx.get(f"https://127.0.0.1:{port}/fhir/metadata", verify=ca_cert)
        assert r.status_code == 200
        assert r.json()["resourceType"] == "CapabilityStatement"
        # A client that does not trust the regional CA refuses the server.
        with pytest.raises(httpx.ConnectError) as caught:
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=True)
        assert isinstance(caught.value.__context__, ssl.SSLCertVerificationError) or (
            "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        )
        # Plain HTTP to the TLS port gets no FHIR answer.
        with pytest.raises(httpx.HTTPError):
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            response.raise_for_status()
    finally:
        service.stop()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "KEY"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "MISSING", "--tls-key", "KEY"], "TLS file not found"),
    ],
)
def test_tls_options_are_checked(
    tmp_path: Path, pki: tuple[Path, Path], flags: list[str], message: str
) -> None:
    _, org_dir = pki
    data_dir = tmp_path / "node"
    assert _ipjms("node", "init", "--org", "org-tls", "--name", "x", "--data-dir",
                  str(data_dir)).returncode == 0  # fmt: skip
    paths = {"CERT": org_dir / "tls.cert.pem", "KEY": org_dir / "tls.key.pem",
             "MISSING": tmp_path / "nope.pem"}  # fmt: skip
    args = [str(paths.get(f, f)) for f in flags]
    r = _ipjms("node", "serve", "--data-dir", str(data_dir), "--port", "0", *args)
    assert r.returncode == 2
    assert message in r.stdout + r.stderr
