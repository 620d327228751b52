"""Envelope throughput, for ``bench/consent.py``: seal+open MB/s next to raw AES-256-GCM.

Both sides process the same payload in the same run, so the ratio is meaningful on a noisy
machine. Keys are generated here (throw-away); nothing is written to disk.
"""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trust.envelopes import EnvelopeHeader, SealedEnvelope, open_sealed, seal

__all__ = ["measure_envelope_throughput"]


def _best_seconds(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_envelope_throughput(payload_bytes: int = 1 << 20, repeats: int = 20) -> dict[str, Any]:
    """Best-of-``repeats`` MB/s (MB = 10^6 bytes) of:

    - ``envelope``: seal (ECDH, HKDF, AES-GCM, ECDSA P-384 sign), to_bytes, from_bytes, open
      (verify, decrypt) of ``payload_bytes`` random bytes;
    - ``raw_aes_gcm``: AES-256-GCM encrypt + decrypt of the same bytes (the baseline).
    """
    payload = os.urandom(payload_bytes)
    sign_key = ec.generate_private_key(ec.SECP384R1())
    enc_key = x25519.X25519PrivateKey.generate()
    header = EnvelopeHeader.new(kind="referral", sender="bench-a", recipient="bench-b")

    def envelope_round() -> None:
        wire = seal(
            header,
            payload,
            sender_signing_key=sign_key,
            recipient_encryption_public_key=enc_key.public_key(),
        ).to_bytes()
        out = open_sealed(
            SealedEnvelope.from_bytes(wire),
            recipient_encryption_key=enc_key,
            sender_verify_key=sign_key.public_key(),
        )
        assert len(out) == payload_bytes

    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)

    def raw_round() -> None:
        out = aead.decrypt(nonce, aead.encrypt(nonce, payload, b"h"), b"h")
        assert len(out) == payload_bytes

    envelope_round()  # warm-up
    raw_round()
    env_s, raw_s = _best_seconds(envelope_round, repeats), _best_seconds(raw_round, repeats)
    env_mbs, raw_mbs = payload_bytes / env_s / 1e6, payload_bytes / raw_s / 1e6
    return {
        "payload_bytes": payload_bytes,
        "repeats": repeats,
        "envelope_seal_open_seconds": env_s,
        "envelope_seal_open_mb_per_s": env_mbs,
        "raw_aes_gcm_seconds": raw_s,
        "raw_aes_gcm_mb_per_s": raw_mbs,
        "envelope_vs_raw_ratio": env_mbs / raw_mbs,
    }
