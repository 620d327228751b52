"""One process of the coordinator load harness (tests/ops/coordinator_load.py): a sender or a
recipient organisation talking gRPC with mutual TLS to real coordinators.

sender:    seal ``--count`` small envelopes to the recipients (round robin) with this org's
           credentials — with ``--consent-url``, first asking the registry for a decision bound
           to each envelope id, as a node does before sealing (so the coordinator's checks are
           one ``$recheck`` each; without it, every envelope is refused: nothing is bound to
           it) — wait for
           the ``--go`` file, send them from ``--threads`` threads to its
           coordinator, write {"sent": [ids], "first": t, "last": t} to ``--out``.
Both report their CPU seconds from the go signal on (``cpu``).
recipient: open a following Inbox stream on EVERY coordinator (competing consumers), open each
           delivered envelope (signature + decryption: the "import"), acknowledge it, record
           every delivery; stop when ``--stop`` appears; write {"deliveries": [[id, replica, t]],
           "acks": {id: state}, "bad": n} to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.exchange.client import ExchangeClient  # noqa: E402
from trust.envelopes import EnvelopeHeader, SealedEnvelope, open_from, seal_to  # noqa: E402
from trust.pki import load_org  # noqa: E402

PAYLOAD = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}).encode()


def _wait_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def sender(ns: argparse.Namespace) -> None:
    creds = load_org(Path(ns.org_dir))
    recipients = [load_org(Path(d)) for d in ns.recipient_dirs.split(",")]
    headers = [
        EnvelopeHeader.new(
            kind="referral",
            sender=creds.org_id,
            recipient=recipients[i % len(recipients)].org_id,
            patient_pseudonym=ns.pseudonym,
        )
        for i in range(ns.count)
    ]
    if ns.consent_url:  # the node's step before sealing: a decision bound to the envelope id
        from consent.client import ConsentClient

        registry = ConsentClient(ns.consent_url, creds)

        def bind(header: EnvelopeHeader) -> None:
            registry.decide(
                ns.pseudonym,
                header.recipient,
                "TREAT",
                ["Condition"],
                envelope_id=header.envelope_id,
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(bind, headers))
        registry.close()
    by_id = {r.org_id: r for r in recipients}
    sealed: list[SealedEnvelope] = [
        seal_to(
            h,
            PAYLOAD,
            sender=creds,
            recipient_encryption_cert_pem=by_id[h.recipient].encryption_cert_pem,
        )
        for h in headers
    ]
    clients = [ExchangeClient(ns.address, creds, timeout=60) for _ in range(ns.threads)]
    Path(ns.out + ".ready").write_text("ready")
    _wait_file(Path(ns.go))
    first, cpu0 = time.time(), time.process_time()
    sent: list[str] = []
    errors: list[str] = []

    def send(i: int) -> None:
        try:
            clients[i % ns.threads].send(sealed[i])
            sent.append(sealed[i].envelope_id)
        except Exception as exc:  # recorded; the harness fails on any
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    with ThreadPoolExecutor(ns.threads) as pool:
        list(pool.map(send, range(len(sealed))))
    last = time.time()
    for c in clients:
        c.close()
    cpu = time.process_time() - cpu0
    Path(ns.out).write_text(
        json.dumps({"sent": sent, "errors": errors, "first": first, "last": last, "cpu": cpu})
    )


def recipient(ns: argparse.Namespace) -> None:
    creds = load_org(Path(ns.org_dir))
    signing = {
        d.split("=", 1)[0]: Path(d.split("=", 1)[1]).read_bytes() for d in ns.senders.split(",")
    }
    lock = threading.Lock()
    deliveries: list[list[object]] = []
    acks: dict[str, str] = {}
    bad = [0]
    stop = threading.Event()
    streams = []

    def consume(index: int, address: str) -> None:
        client = ExchangeClient(address, creds, timeout=60)
        stream = client.inbox(follow=True, max_batch=ns.batch)
        streams.append(stream)
        try:
            for envelope in stream:
                try:
                    open_from(
                        envelope.sealed,
                        recipient=creds,
                        sender_signing_cert_pem=signing[envelope.header.sender],
                    )
                    ok = True
                except Exception:
                    ok = False
                state = client.acknowledge(envelope.header.envelope_id, imported=ok)
                with lock:
                    deliveries.append([envelope.header.envelope_id, index, time.time()])
                    acks[envelope.header.envelope_id] = state
                    bad[0] += not ok
        except Exception:
            if not stop.is_set():
                raise
        finally:
            client.close()

    threads = [
        threading.Thread(target=consume, args=(i, a), daemon=True)
        for i, a in enumerate(ns.addresses.split(","))
    ]
    for t in threads:
        t.start()
    Path(ns.out + ".ready").write_text("ready")
    _wait_file(Path(ns.go))
    cpu0 = time.process_time()
    _wait_file(Path(ns.stop))
    cpu = time.process_time() - cpu0
    stop.set()
    for s in streams:
        s.cancel()
    for t in threads:
        t.join(10)
    with lock:
        Path(ns.out).write_text(
            json.dumps({"deliveries": deliveries, "acks": acks, "bad": bad[0], "cpu": cpu})
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["sender", "recipient"])
    p.add_argument("--org-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--address", default="")
    p.add_argument("--addresses", default="")
    p.add_argument("--recipient-dirs", default="")
    p.add_argument("--senders", default="")
    p.add_argument("--pseudonym", default="")
    p.add_argument("--consent-url", default="")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--go", default="")
    p.add_argument("--stop", default="")
    ns = p.parse_args()
    sender(ns) if ns.role == "sender" else recipient(ns)


if __name__ == "__main__":
    main()
