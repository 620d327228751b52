"""The node's gRPC client of the coordinator (mutual TLS with the organisation's PKI credentials).

Thin and synchronous: each method is one RPC. Sealing, consent and import live elsewhere
(node.exchange.egress / node.exchange.inbound); this module only moves envelopes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from protos.ipjms.exchange.v1 import exchange_pb2_grpc as pb_grpc
from trust.envelope_wire import header_to_pb
from trust.envelopes import SealedEnvelope
from trust.pki import OrgCredentials
from trust.tls import pin_server_org

__all__ = ["ExchangeClient", "DirectoryEntry"]


@dataclass(frozen=True)
class DirectoryEntry:
    org_id: str
    name: str
    level: str
    endpoints: dict[str, str]
    encryption_certificate: bytes
    signing_certificate: bytes
    online: bool
    revoked: bool


def _entry(org: pb.Organisation) -> DirectoryEntry:
    return DirectoryEntry(
        org_id=org.org_id,
        name=org.name,
        level=org.level,
        endpoints={e.kind: e.url for e in org.endpoints},
        encryption_certificate=org.encryption_certificate,
        signing_certificate=org.signing_certificate,
        online=org.online,
        revoked=org.revoked,
    )


class ExchangeClient:
    def __init__(
        self,
        address: str,
        creds: OrgCredentials,
        *,
        timeout: float = 15.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        server_org: str | None = None,
    ) -> None:
        """``server_org``: accept only that organisation's certificate from the server (the
        coordinator), not any certificate of the regional CA valid for ``address``."""
        self.address = address
        self.creds = creds
        self.timeout = timeout
        channel_creds = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_cert_pem,
            private_key=creds.tls_key_pem,
            certificate_chain=creds.tls_cert_pem,
        )
        self.channel = grpc.secure_channel(
            address,
            channel_creds,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.enable_retries", 0),
                # every call to the next coordinator replica: a headless Service resolves to
                # all of them (deploy/helm), so replicas share the load per request, not per
                # long-lived connection
                ("grpc.lb_policy_name", "round_robin"),
                # a restarted coordinator is reached again within about a second (gRPC's
                # default reconnect backoff grows to 120 s, failing every call meanwhile)
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.min_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 1_000),
                *(pin_server_org(server_org) if server_org else []),
            ],
        )
        self.directory = pb_grpc.DirectoryStub(self.channel)
        self.locator = pb_grpc.RecordLocatorStub(self.channel)
        self.exchange = pb_grpc.ExchangeStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ExchangeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # directory and locator
    def organisation(self, org_id: str) -> DirectoryEntry:
        return _entry(
            self.directory.GetOrganisation(
                pb.GetOrganisationRequest(org_id=org_id), timeout=self.timeout
            )
        )

    def organisations(self, level: str = "") -> list[DirectoryEntry]:
        reply = self.directory.ListOrganisations(
            pb.ListOrganisationsRequest(level=level), timeout=self.timeout
        )
        return [_entry(o) for o in reply.organisations]

    def publish(self, pseudonyms: list[str], *, replace: bool = False) -> int:
        reply = self.locator.Publish(
            pb.PublishRequest(patient_pseudonyms=pseudonyms, replace=replace),
            timeout=self.timeout,
        )
        return int(reply.published)

    def lookup(self, pseudonym: str, *, lookup_id: str) -> list[str]:
        """Holders of the patient. A lookup is a disclosure: the caller first binds a consent
        registry decision (its purpose and classes) to ``lookup_id`` (``ConsentClient.decide``
        with ``lookup_id``; a break-glass pull's grant is made with it); the coordinator has the
        registry decide it again by that id (PERMISSION_DENIED without one, or when it no
        longer permits) and audits the lookup. Purpose and classes are not sent here."""
        reply = self.locator.Lookup(
            pb.LookupRequest(patient_pseudonym=pseudonym, lookup_id=lookup_id),
            timeout=self.timeout,
        )
        return list(reply.holders)

    # exchange
    def send(self, sealed: SealedEnvelope) -> bool:
        """Queue a sealed envelope; returns True when the coordinator saw it before (retry)."""
        reply = self.exchange.Send(
            pb.Envelope(header=header_to_pb(sealed.header), sealed=sealed.to_bytes()),
            timeout=self.timeout,
        )
        return bool(reply.duplicate)

    def inbox(self, *, follow: bool, max_batch: int = 16) -> Iterator[pb.Envelope]:
        """Envelopes addressed to us. ``follow=False`` drains and ends (polling); ``True`` keeps
        the stream open. Cancel a following stream with ``.cancel()`` on the returned iterator."""
        return self.exchange.Inbox(  # type: ignore[no-any-return]
            pb.InboxRequest(follow=follow, max_batch=max_batch),
            timeout=None if follow else self.timeout,
        )

    def acknowledge(self, envelope_id: str, *, imported: bool, detail: str = "") -> str:
        reply = self.exchange.Acknowledge(
            pb.AcknowledgeRequest(
                envelope_id=envelope_id,
                outcome=pb.OUTCOME_IMPORTED if imported else pb.OUTCOME_REJECTED,
                detail=detail,
            ),
            timeout=self.timeout,
        )
        return str(reply.state)

    def status(self, envelope_id: str) -> pb.StatusResponse:
        return self.exchange.Status(  # type: ignore[no-any-return]
            pb.StatusRequest(envelope_id=envelope_id), timeout=self.timeout
        )
