"""Demo chapter: the web applications (issue 16).

``start`` makes every node trust the consent registry's patient sign-in (the registry's token key
pinned through ``net.facts["node_env"]``, read when the nodes chapter starts them), so the
region's one patient login works on every node's pages.

``run`` (after the care chapter, so the story's patients, plans, alerts and referrals are there
to click through): each node's pages answer with their security headers; the demo doctor signs
in through the page and the node's own login page (code + PKCE) and sees the panel; the
sign-ins are written, readable by the owner only (0600), to ``<workdir>/web-sign-ins.txt``;
the URLs join the summary table (``ipjms demo --keep-running`` keeps them up).
"""

from __future__ import annotations

import json
import os

import httpx

from deploy.demo.network import DemoNetwork
from deploy.demo.staff_sign_in import sign_in_staff

__all__ = ["start", "run", "SIGN_INS_FILE"]

SIGN_INS_FILE = "web-sign-ins.txt"
_PATIENT_PASSWORD_FILE = "demo-patient-password"  # noqa: S105 - a file name (chapter_consent)


def start(net: DemoNetwork) -> None:
    from trust.tokens import jwk_thumbprint, load_or_create_signing_key

    data_dir = net.facts.get("consent_data_dir")
    if data_dir is None:
        return
    key = load_or_create_signing_key(data_dir / "keys" / "access-token.pem")
    env = net.facts.setdefault("node_env", {})
    env["IPJMS_NODE_CONSENT__PATIENT_KEY_PINS"] = json.dumps([jwk_thumbprint(key.public_jwk())])


def _doctor_sign_in(url: str, password: str) -> int:
    """Sign in through the pages and the node's login page as a browser does; the panel's
    status."""
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as client:
        page = client.get("/app/sign-in")
        if "script-src 'self'" not in page.headers.get("content-security-policy", ""):
            raise RuntimeError(f"{url}/app/sign-in has no Content-Security-Policy")
        signed = sign_in_staff(client, "doctor", password)
        if signed.status_code != 303:
            raise RuntimeError(f"doctor sign-in answered {signed.status_code}")
        return client.get("/app/panel").status_code


def run(net: DemoNetwork) -> None:
    from deploy.demo.chapter_exchange import _DOCTOR_PASSWORD_FILE, _doctor

    with net.step("The web applications: each node's doctor and patient pages") as notes:
        lines = ["# IPJMS demo sign-ins (this file is readable by you only)", ""]
        for node in net.nodes.values():
            _doctor(net, node)  # the demo doctor account (made once)
            password = (node.data_dir / _DOCTOR_PASSWORD_FILE).read_text().strip()
            status = _doctor_sign_in(node.url, password)
            if status != 200:
                raise RuntimeError(f"{node.org_id}: the doctor's panel answered {status}")
            net.urls[f"Doctor app — {node.name}"] = f"{node.url}/app/"
            lines += [f"{node.name} ({node.org_id}) doctor app: {node.url}/app/",
                      f"  user name: doctor   password: {password}"]  # fmt: skip
            notes.append(f"{node.org_id}: sign-in page with CSP, doctor panel 200")
        consent = net.facts.get("consent", {})
        patient_file = net.service_dir("consent") / _PATIENT_PASSWORD_FILE
        tertiary = next((n for n in net.nodes.values() if n.level == "tertiary"), None)
        if consent.get("patient_username") and patient_file.exists() and tertiary is not None:
            net.urls["Patient app (regional sign-in)"] = f"{tertiary.url}/app/patient/sign-in"
            lines += ["", f"Patient app (one regional login): {tertiary.url}/app/patient/sign-in",
                      f"  user name: {consent['patient_username']}   "
                      f"password: {patient_file.read_text().strip()}"]  # fmt: skip
        path = net.workdir / SIGN_INS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        notes.append(f"sign-ins written to {path} (0600)")
