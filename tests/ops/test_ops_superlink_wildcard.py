"""``ipjms fl superlink --host 0.0.0.0`` (the container default) admits SuperNodes: its own
Control API client must connect on loopback, a name the authority's certificate carries, not to
the wildcard address (which TLS name verification refuses). Its supervisor serves /metrics; its
Fleet API refuses a plaintext channel."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from deploy.launcher import free_port, start_service, wait_until
from trust.pki import init_ca, issue_org


def test_superlink_bound_to_all_interfaces_admits_supernodes(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    init_ca(ca)
    issue_org(ca, "org-authority", host="127.0.0.1,localhost")
    issue_org(ca, "org-a", host="127.0.0.1")
    # Flower's SuperLink binds its Fleet and Control ports itself and cannot say which it got
    # for port 0: those two stay free_port(); the supervisor's health port is bound at 0.
    fleet, control = free_port(), free_port()
    data = tmp_path / "superlink"
    service = start_service(
        "superlink",
        ["fl", "superlink", "--data-dir", str(data),
         "--org-dir", str(ca / "orgs" / "org-authority"), "--host", "0.0.0.0",
         "--port", "0", "--fleet-port", str(fleet),
         "--control-port", str(control), "--authorize", str(ca / "orgs" / "org-a")],
        base_url="http://127.0.0.1:{http}",
        log_dir=tmp_path / "logs",
        timeout=120,
        ports_dir=data,
    )  # fmt: skip
    try:
        admitted = data / "supernodes.json"

        def org_a_admitted() -> bool:
            if not service.alive():
                raise AssertionError(f"SuperLink exited:\n{service.log_tail()}")
            return admitted.exists() and "org-a" in json.loads(admitted.read_text())

        wait_until(org_a_admitted, 90, interval=0.2, what="org-a's SuperNode admitted")
        metrics = httpx.get(f"{service.base_url}/metrics", timeout=10).text
        assert 'ipjms_flower_process_up{service="superlink"} 1.0' in metrics
        assert 'ipjms_flower_ready{service="superlink"} 1.0' in metrics
        # the Fleet API (SuperNodes' channel) is TLS only (issue 22, must-show 2): a channel
        # verified against the regional CA becomes ready, one without TLS never does
        import grpc

        from deploy.demo.tls_check import plaintext_grpc_refused

        address = f"127.0.0.1:{fleet}"
        creds = grpc.ssl_channel_credentials((ca / "ca.cert.pem").read_bytes())
        with grpc.secure_channel(address, creds) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        assert plaintext_grpc_refused(address)
    finally:
        service.stop()
