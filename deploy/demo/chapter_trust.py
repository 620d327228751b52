"""Demo chapter: the regional PKI and the shared linkage key, before any service starts.

``start`` creates the authority's CA and issues credentials for every organisation of the demo
region; later chapters find them in ``net.facts["pki"]``. ``run`` shows what was issued.
"""

from __future__ import annotations

from pathlib import Path

from deploy.demo.network import (
    AUTHORITY_ORG,
    CONSENT_ORG,
    COORDINATOR_ORG,
    DemoNetwork,
)
from trust.pki import init_ca, issue_org, load_org
from trust.pseudonym import load_or_create_linkage_key


def all_orgs(net: DemoNetwork) -> list[str]:
    return [AUTHORITY_ORG, COORDINATOR_ORG, CONSENT_ORG, *(org for org, *_ in net.node_specs)]


def start(net: DemoNetwork) -> None:
    pki_dir = net.service_dir("pki")
    ca_dir = pki_dir / "ca"
    if not (ca_dir / "ca.cert.pem").exists():
        init_ca(ca_dir, name="IPJMS Demo Regional CA")
    org_dirs: dict[str, Path] = {}
    for org in all_orgs(net):
        out = ca_dir / "orgs" / org
        if not (out / "org.json").exists():
            issue_org(ca_dir, org, host="127.0.0.1,localhost")
        org_dirs[org] = out
    # Nodes share the regional linkage key (the coordinator and registry never get it).
    linkage_key = pki_dir / "linkage.key"
    load_or_create_linkage_key(linkage_key)
    net.facts["pki"] = {"ca_dir": ca_dir, "orgs": org_dirs, "linkage_key": linkage_key}


def run(net: DemoNetwork) -> None:
    pki = net.facts["pki"]
    with net.step("Regional PKI: CA and organisation credentials") as notes:
        for org, org_dir in pki["orgs"].items():
            creds = load_org(org_dir)
            notes.append(f"{org}: TLS, signing and encryption certificates ({creds.org_id})")
