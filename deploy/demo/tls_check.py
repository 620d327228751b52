"""The last step of ``ipjms up`` with ``[tls] enabled``: every hop refuses a plaintext client.

For each node, the consent registry and the coordinator's status API: a plain ``http://``
request gets no answer while ``https://`` (verified against the regional CA) does; the
coordinator's gRPC and the SuperLink's Fleet API: a channel without TLS never becomes ready;
PostgreSQL: ``sslmode=disable`` is refused by the server while ``verify-full`` connects.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx

from deploy.demo.network import DemoNetwork

__all__ = ["run", "plaintext_http_refused", "plaintext_grpc_refused", "plaintext_pg_refused"]


def plaintext_http_refused(https_url: str) -> bool:
    """True when ``https_url`` answers over TLS and its plaintext twin gets no HTTP answer."""
    ok = httpx.get(f"{https_url}/livez", timeout=10)  # verified: SSL_CERT_FILE
    if ok.status_code >= 400:
        raise RuntimeError(f"{https_url}/livez answered {ok.status_code} over TLS")
    plain = https_url.replace("https://", "http://", 1)
    try:
        httpx.get(f"{plain}/livez", timeout=10)
    except httpx.TransportError:
        return True
    return False


def plaintext_grpc_refused(address: str) -> bool:
    """True when an insecure gRPC channel to ``address`` never becomes ready."""
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=3)
    except grpc.FutureTimeoutError:
        return True
    finally:
        channel.close()
    return False


def plaintext_pg_refused(url: str, password: str | None) -> str | None:
    """The server's refusal of a plaintext connection to ``url`` (None: it was accepted)."""
    import psycopg

    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://"))
    plain = urlunsplit(parts._replace(query="sslmode=disable"))
    try:
        psycopg.connect(plain, password=password, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0][-160:]
    return None


def run(net: DemoNetwork) -> None:
    with net.step("Plaintext refused at every hop: HTTPS, gRPC TLS, PostgreSQL TLS") as notes:
        https = {f"node {org}": node.url for org, node in net.nodes.items()}
        https["consent registry"] = net.facts["consent_url"]
        https["coordinator status API"] = net.facts["coordinator"]["status_url"].rsplit(
            "/status", 1
        )[0]
        for what, url in https.items():
            if not url.startswith("https://") or not plaintext_http_refused(url):
                raise RuntimeError(f"{what} ({url}) answers plaintext HTTP")
        notes.append(f"{len(https)} HTTP services: HTTPS only (plain http:// gets no answer)")
        grpc_hops = {"coordinator gRPC": net.facts["coordinator"]["address"]}
        if "federated" in net.facts:
            grpc_hops["SuperLink Fleet API"] = net.facts["federated"]["fleet"]
        for what, address in grpc_hops.items():
            if not plaintext_grpc_refused(address):
                raise RuntimeError(f"{what} ({address}) accepts a plaintext channel")
        notes.append(f"{', '.join(grpc_hops)}: a channel without TLS never becomes ready")
        password = net.facts.get("db_password")
        refusal = ""
        for service, url in net.db_urls.items():
            if "sslmode=verify-full" not in url:
                raise RuntimeError(f"{service}'s database URL does not verify TLS")
            refused = plaintext_pg_refused(url, password)
            if refused is None:
                raise RuntimeError(f"{service}'s PostgreSQL accepts a plaintext connection")
            refusal = refused
        notes.append(
            f"{len(net.db_urls)} PostgreSQL databases: verify-full; plaintext refused "
            f"({refusal.split('FATAL:')[-1].strip()})"
        )
