"""Encrypted backups: a database dump sealed to the organisation's X25519 encryption key.

Dumps hold patient data, so none is written in the clear: ``ipjms backup seal`` encrypts a dump
to the organisation's encryption *certificate* (the backup host needs no private key), and only
the holder of its encryption private key — kept offline with the CA, or in the organisation's
key store — can ``ipjms backup open`` it.

Format (streamed, so a dump of any size needs constant memory)::

    "IPJMSBK1" | ephemeral X25519 public key (32) | chunk* (each: 4-byte length | AES-256-GCM)

The key is HKDF-SHA256 of the ephemeral-static X25519 secret (salt: the header). Chunk ``i``'s
nonce is its 12-byte big-endian index; its associated data is the header, the index and a final
flag, so a reordered, dropped, truncated or tampered chunk fails to open.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["BackupCryptoError", "seal_stream", "open_stream", "CHUNK"]

MAGIC = b"IPJMSBK1"
CHUNK = 1 << 20
_INFO = b"ipjms backup v1"


class BackupCryptoError(ValueError):
    """Not an IPJMS backup, the wrong key, or a damaged/truncated file."""


def _key(shared: bytes, header: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=header, info=_INFO).derive(shared)
    return AESGCM(derived)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">Q?", index, final)


def _read_full(src: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = src.read(size - len(data))
        if not part:
            break
        data += part
    return data


def seal_stream(src: BinaryIO, dst: BinaryIO, recipient: x25519.X25519PublicKey) -> int:
    """Encrypt ``src`` to ``recipient`` into ``dst``; returns the plaintext bytes sealed."""
    ephemeral = x25519.X25519PrivateKey.generate()
    raw = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = MAGIC + raw
    aead = _key(ephemeral.exchange(recipient), header)
    dst.write(header)
    total, index = 0, 0
    chunk = _read_full(src, CHUNK)
    while True:
        following = _read_full(src, CHUNK) if len(chunk) == CHUNK else b""
        final = not following
        sealed = aead.encrypt(index.to_bytes(12, "big"), chunk, _aad(header, index, final))
        dst.write(struct.pack(">I", len(sealed)) + sealed)
        total += len(chunk)
        if final:
            return total
        chunk, index = following, index + 1


def open_stream(src: BinaryIO, dst: BinaryIO, key: x25519.X25519PrivateKey) -> int:
    """Decrypt a sealed backup from ``src`` into ``dst``; returns the plaintext bytes."""
    header = _read_full(src, len(MAGIC) + 32)
    if len(header) != len(MAGIC) + 32 or not header.startswith(MAGIC):
        raise BackupCryptoError("not an IPJMS encrypted backup")
    ephemeral = x25519.X25519PublicKey.from_public_bytes(header[len(MAGIC) :])
    aead = _key(key.exchange(ephemeral), header)
    total, index = 0, 0
    while True:
        length_bytes = _read_full(src, 4)
        if len(length_bytes) != 4:
            raise BackupCryptoError("the backup is truncated (its last part is missing)")
        (length,) = struct.unpack(">I", length_bytes)
        if length > CHUNK + 16:
            raise BackupCryptoError("damaged backup (a part longer than the format allows)")
        sealed = _read_full(src, length)
        nonce = index.to_bytes(12, "big")
        for final in (False, True):
            try:
                plain = aead.decrypt(nonce, sealed, _aad(header, index, final))
                break
            except InvalidTag:
                continue
        else:
            raise BackupCryptoError(
                "cannot open the backup: wrong key, or the file was changed or damaged"
            )
        dst.write(plain)
        total += len(plain)
        if final:
            if src.read(1):
                raise BackupCryptoError("damaged backup (data after its last part)")
            return total
        index += 1
