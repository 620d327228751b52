"""The region's pseudonymisation authority in the demo and ``ipjms up`` (issue 23).

Started by the trust chapter, before any node: ``ipjms pseudonym serve`` as the authority's
organisation, serving only the region's nodes. Every node gets ``IPJMS_NODE_PSEUDONYM_URL`` and
therefore no linkage key; the story's own look-ups (which patient is which pseudonym) ask the
authority as the node they act for, exactly as that node would.
"""

from __future__ import annotations

from deploy.demo.network import AUTHORITY_ORG, DemoNetwork
from deploy.launcher import free_port
from trust.group_backend import allow_pure_python_on_one_machine
from trust.oprf_client import OprfPseudonyms
from trust.pki import load_org
from trust.pseudonymiser import OprfPseudonymiser

__all__ = ["start_authority", "pseudonymiser", "BULK_LOAD_BUDGET"]

#: The demo loads a few hundred synthetic patients per node within minutes and asks their
#: pseudonyms from several processes (each chapter, the node, its SuperNode): a bulk load, not
#: the ordinary use the authority's default budget is derived from (trust/oprf_service.py:
#: 300 an hour, burst 200). A real region's first load of a large cohort is granted the same
#: way, for its window. A restart does not need it: the node keeps the pseudonyms it obtained in
#: its database (node/pseudonym_store) and asks the authority again for none of them.
BULK_LOAD_BUDGET = {
    "IPJMS_PSEUDONYM_BUDGET_PER_HOUR": "20000",
    "IPJMS_PSEUDONYM_BUDGET_BURST": "2000",
}


def start_authority(net: DemoNetwork) -> str:
    # one machine: without libsodium the authority, the nodes and the story itself (all started
    # from here, inheriting the environment) use the pure-Python group; said once, in yellow
    allow_pure_python_on_one_machine(lambda text: net.console.print(f"[yellow]{text}[/yellow]"))
    pki = net.facts["pki"]
    port = free_port()
    url = f"{net.scheme}://127.0.0.1:{port}"
    clients = [a for org, *_ in net.node_specs for a in ("--client", org)]
    net.start(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(net.service_dir("pseudonym")),
         "--port", str(port), "--ca-dir", str(pki["ca_dir"]), "--org-id", AUTHORITY_ORG,
         "--public-url", url, *clients, *net.db_args("pseudonym"),
         *net.tls_args(pki["orgs"][AUTHORITY_ORG])],
        base_url=url, env=BULK_LOAD_BUDGET,
    )  # fmt: skip
    net.facts["pseudonym_url"] = url
    net.facts.setdefault("node_env", {})["IPJMS_NODE_PSEUDONYM_URL"] = url
    net.urls["Pseudonymisation authority (RFC 9497 OPRF)"] = f"{url}/oprf/evaluate"
    return url


def pseudonymiser(net: DemoNetwork, org: str) -> OprfPseudonymiser:
    """Pseudonyms as ``org`` (one of the nodes) obtains them from the authority."""
    creds = load_org(net.facts["pki"]["orgs"][org])
    return OprfPseudonymiser(OprfPseudonyms(net.facts["pseudonym_url"], creds))
