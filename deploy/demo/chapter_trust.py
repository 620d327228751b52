"""Demo chapter: the regional PKI and the pseudonymisation authority, before any other service.

``start`` creates the authority's CA, issues credentials for every organisation of the demo
region (later chapters find them in ``net.facts["pki"]``) and starts the authority's OPRF
service, from which every node obtains pseudonyms (no node holds a linkage key). ``run`` shows
what was issued.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from cryptography import x509

from deploy.demo.network import (
    AUTHORITY_ORG,
    CONSENT_ORG,
    COORDINATOR_ORG,
    DemoNetwork,
)
from deploy.demo.pseudonym_authority import start_authority
from deploy.demo.regional_ca import ensure_ca, issue
from trust.pki import (
    CRL_REISSUE_AFTER,
    crl_schedule,
    load_crl,
    load_org,
    reissue_crl,
)


def all_orgs(net: DemoNetwork) -> list[str]:
    return [AUTHORITY_ORG, COORDINATOR_ORG, CONSENT_ORG, *(org for org, *_ in net.node_specs)]


def start(net: DemoNetwork) -> None:
    pki_dir = net.service_dir("pki")
    ca_dir = pki_dir / "ca"
    passphrase = ensure_ca(ca_dir, name="IPJMS Demo Regional CA")  # the CA key is encrypted
    org_dirs: dict[str, Path] = {}
    for org in all_orgs(net):
        out = ca_dir / "orgs" / org
        if not (out / "org.json").exists():
            issue(ca_dir, org, host="127.0.0.1,localhost")
        org_dirs[org] = out
    # The CA re-signs its CRL on a schedule (verifiers refuse one past nextUpdate): now if
    # it is over a day old (a restarted network), then checked every minute while we run.
    reissue_crl(ca_dir, ca_passphrase=passphrase, if_older_than=CRL_REISSUE_AFTER)
    stop = threading.Event()
    threading.Thread(
        target=crl_schedule,
        args=(ca_dir, stop),
        kwargs={"every": 60.0, "ca_passphrase": passphrase},
        daemon=True,
    ).start()
    net.facts["crl_schedule_stop"] = stop
    net.facts["pki"] = {"ca_dir": ca_dir, "orgs": org_dirs}
    # Pseudonyms come from the authority's OPRF: no node, registry or coordinator holds a key
    # that makes them (deploy/demo/pseudonym_authority.py).
    start_authority(net)


def run(net: DemoNetwork) -> None:
    pki = net.facts["pki"]
    with net.step("Regional PKI: CA and organisation credentials") as notes:
        for org, org_dir in pki["orgs"].items():
            creds = load_org(org_dir)
            notes.append(f"{org}: TLS, signing and encryption certificates ({creds.org_id})")
        crl = load_crl(pki["ca_dir"])
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        notes.append(
            f"CRL #{number}, valid until {crl.next_update_utc:%Y-%m-%d %H:%M} UTC, re-signed "
            "on a schedule; a missing, stale or rolled-back CRL refuses every certificate"
        )
        health = httpx.get(f"{net.facts['pseudonym_url']}/healthz", timeout=30).json()
        notes.append(
            f"pseudonymisation authority: RFC 9497 OPRF ({health['suite']}, group "
            f"{health['group']}), key version v{health['current_version']}; nodes blind "
            "identifiers and hold no linkage key"
        )
