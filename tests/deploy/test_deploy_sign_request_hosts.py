"""Every script that signs an organisation's certificate request names the hosts it expects
(`ipjms pki sign-request --host`): the hosts inside a request are the organisation's claim, and
the CA refuses any that differ from the operator's list (trust/certificate_requests.py)."""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _sign_request_calls(text: str) -> list[str]:
    """Each `pki sign-request` command, its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if "pki sign-request" in line]


def test_every_scripted_sign_request_passes_the_expected_hosts() -> None:
    scripts = sorted(DEPLOY.rglob("*.sh"))
    calls = {str(p.relative_to(DEPLOY)): _sign_request_calls(p.read_text()) for p in scripts}
    found = {name: c for name, c in calls.items() if c}
    # the two places a region's certificates are made from requests (Compose pki-bootstrap,
    # the Kustomize secrets); a new one is checked the same way
    assert {"entrypoint.sh", "k8s/gen-secrets.sh"} <= set(found)
    missing = [
        f"{name}: {c.strip()}" for name, cs in found.items() for c in cs if " --host " not in c
    ]
    assert not missing, missing
