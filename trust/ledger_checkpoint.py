"""Signed checkpoints of an audit ledger, anchored outside the database they cover.

A hash chain proves nothing against whoever can write its database: deleting the newest entries
and moving the head back, or editing an entry and re-hashing everything after it, leaves a chain
that verifies (issue 13, finding 8). A *checkpoint* fixes the chain's head at a moment —
``{log, seq, hash, issued_at}`` signed with the operating organisation's CA-certified signing
key (ECDSA) — and is written to a file outside that database. Transparency-log style, another
organisation (a *witness*) countersigns checkpoints and keeps its own copy: the witness refuses to
cosign a checkpoint that goes back (a lower ``seq``) or forks (the same ``seq`` with another
hash) from the last one it cosigned for that log, so an operator who rewrites the chain and
re-signs a fresh checkpoint with its own key is caught by the witness's copy.

:func:`check_against_checkpoints` (what ``ipjms audit verify --checkpoints`` runs) compares a
chain — after its own hash-chain check — with every checkpoint whose signatures verify: a chain
shorter than a checkpoint was **truncated**; an entry whose hash differs from a checkpoint at
its position was **rewritten**; two validly signed checkpoints with the same ``seq`` and
different hashes are an **equivocation**.

Files are JSON lines, append-only (one checkpoint per line, cosignatures included).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trust.canonical_json import canonical_json
from trust.certificates import CertificateError, load_certificate, verify_peer_certificate

__all__ = [
    "Checkpoint",
    "Cosignature",
    "CheckpointError",
    "sign_checkpoint",
    "cosign",
    "verified_signers",
    "append_checkpoint",
    "read_checkpoints",
    "check_against_checkpoints",
]


class CheckpointError(Exception):
    """A checkpoint cannot be made, cosigned or trusted (bad signature, fork, rollback)."""


@dataclass(frozen=True)
class Cosignature:
    witness: str
    issued_at: str
    signature: str  # base64 DER ECDSA over the checkpoint statement
    certificate: str  # the witness's signing certificate (PEM)


@dataclass(frozen=True)
class Checkpoint:
    log: str  # which ledger: "<org id>/<service>"
    seq: int
    hash: str
    issued_at: str
    signer: str
    signature: str
    certificate: str
    cosignatures: tuple[Cosignature, ...] = field(default=())

    def statement(self) -> bytes:
        """What every signature covers: the log, its head and when."""
        return canonical_json(
            {"log": self.log, "seq": self.seq, "hash": self.hash, "issued_at": self.issued_at}
        )

    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in self.__dict__.items() if k != "cosignatures"}
        body["cosignatures"] = [c.__dict__ for c in self.cosignatures]
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Checkpoint:
        try:
            return cls(
                log=str(body["log"]),
                seq=int(body["seq"]),
                hash=str(body["hash"]),
                issued_at=str(body["issued_at"]),
                signer=str(body["signer"]),
                signature=str(body["signature"]),
                certificate=str(body["certificate"]),
                cosignatures=tuple(Cosignature(**c) for c in body.get("cosignatures") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed checkpoint: {exc}") from None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA384()))).decode()


def _verify(
    certificate: str,
    signature: str,
    data: bytes,
    ca_cert_pem: bytes,
    revoked: Collection[str | int],
    at: str,
) -> str:
    """The organisation whose CA-certified key made ``signature``; CheckpointError otherwise.
    The certificate must have been valid when the checkpoint was issued."""
    try:
        when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        org = verify_peer_certificate(
            certificate.encode(), ca_cert_pem, revoked=revoked, usage="signing", now=when
        )
        key = load_certificate(certificate.encode()).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CheckpointError("checkpoint certificate key is not an EC key")
        key.verify(base64.b64decode(signature), data, ec.ECDSA(hashes.SHA384()))
    except (CertificateError, ValueError) as exc:
        raise CheckpointError(f"checkpoint certificate refused: {exc}") from None
    except InvalidSignature:
        raise CheckpointError("checkpoint signature does not verify") from None
    return org


def sign_checkpoint(creds: Any, log: str, seq: int, head_hash: str) -> Checkpoint:
    """The head ``(seq, head_hash)`` of ``log`` signed by ``creds``
    (:class:`trust.pki.OrgCredentials`, its signing key)."""
    unsigned = Checkpoint(log, seq, head_hash, _now(), creds.org_id, "", "")
    return replace(
        unsigned,
        signature=_sign(creds.signing_key, unsigned.statement()),
        certificate=creds.signing_cert_pem.decode(),
    )


def cosign(
    checkpoint: Checkpoint,
    witness: Any,
    *,
    ca_cert_pem: bytes,
    witnessed: Sequence[Checkpoint],
    revoked: Collection[str | int] = (),
) -> Checkpoint:
    """``witness`` (OrgCredentials of another organisation) countersigns ``checkpoint`` after
    checking its signature and that it neither goes back from nor forks the checkpoints of the
    same log the witness cosigned before (``witnessed``, the witness's own copy)."""
    signer = _verify(
        checkpoint.certificate,
        checkpoint.signature,
        checkpoint.statement(),
        ca_cert_pem,
        revoked,
        checkpoint.issued_at,
    )
    if signer != checkpoint.signer:
        raise CheckpointError(f"checkpoint names {checkpoint.signer} but {signer} signed it")
    if witness.org_id == signer:
        raise CheckpointError("a witness must be another organisation than the log's operator")
    for earlier in witnessed:
        if earlier.log != checkpoint.log:
            continue
        if earlier.seq > checkpoint.seq:
            raise CheckpointError(
                f"rollback: {checkpoint.log} was already cosigned at {earlier.seq} entries, "
                f"this checkpoint has {checkpoint.seq}"
            )
        if earlier.seq == checkpoint.seq and earlier.hash != checkpoint.hash:
            raise CheckpointError(
                f"fork: {checkpoint.log} entry {earlier.seq} was cosigned with another hash"
            )
    issued = _now()
    mark = Cosignature(
        witness.org_id,
        issued,
        _sign(witness.signing_key, checkpoint.statement()),
        witness.signing_cert_pem.decode(),
    )
    return replace(checkpoint, cosignatures=(*checkpoint.cosignatures, mark))


def verified_signers(
    checkpoint: Checkpoint, *, ca_cert_pem: bytes, revoked: Collection[str | int] = ()
) -> tuple[str, list[str]]:
    """(operator, witnesses) whose signatures on ``checkpoint`` verify; CheckpointError if the
    operator's does not."""
    operator = _verify(
        checkpoint.certificate,
        checkpoint.signature,
        checkpoint.statement(),
        ca_cert_pem,
        revoked,
        checkpoint.issued_at,
    )
    if operator != checkpoint.signer:
        raise CheckpointError(f"checkpoint names {checkpoint.signer} but {operator} signed it")
    witnesses = []
    for mark in checkpoint.cosignatures:
        try:
            who = _verify(
                mark.certificate,
                mark.signature,
                checkpoint.statement(),
                ca_cert_pem,
                revoked,
                mark.issued_at,
            )
        except CheckpointError:
            continue
        if who == mark.witness and who != operator:
            witnesses.append(who)
    return operator, witnesses


# --- files ----------------------------------------------------------------------------------


def append_checkpoint(path: Path | str, checkpoint: Checkpoint) -> None:
    """Append one line and fsync it (the file is the anchor: it must survive a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(checkpoint.to_json(), separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoints(path: Path | str) -> list[Checkpoint]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Checkpoint.from_json(json.loads(line)))
        except (ValueError, CheckpointError) as exc:
            raise CheckpointError(f"{path}:{number}: {exc}") from None
    return out


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    problem: str = ""
    latest_seq: int = 0
    checked: int = 0
    witnesses: tuple[str, ...] = ()


def check_against_checkpoints(
    chain: Sequence[tuple[int, str]],
    checkpoints: Iterable[Checkpoint],
    *,
    log: str | None,
    ca_cert_pem: bytes,
    revoked: Collection[str | int] = (),
    operator: str | None = None,
    require_witness: bool = False,
) -> CheckpointReport:
    """``chain``: (seq, hash) of every entry in order (already checked as a hash chain).
    Every checkpoint of ``log`` whose operator signature verifies must match the chain."""
    by_seq = dict(chain)
    length = len(chain)
    trusted: list[Checkpoint] = []
    witnesses: set[str] = set()
    for cp in checkpoints:
        if log is not None and cp.log != log:
            continue
        try:
            signer, cosigners = verified_signers(cp, ca_cert_pem=ca_cert_pem, revoked=revoked)
        except CheckpointError as exc:
            return CheckpointReport(False, f"checkpoint at entry {cp.seq} not trusted: {exc}")
        if operator is not None and signer != operator:
            return CheckpointReport(
                False, f"checkpoint at entry {cp.seq} signed by {signer}, not {operator}"
            )
        if require_witness and not cosigners:
            continue
        trusted.append(cp)
        witnesses.update(cosigners)
    if not trusted:
        what = "countersigned " if require_witness else ""
        return CheckpointReport(False, f"no {what}signed checkpoint of this ledger found")
    seen: dict[int, str] = {}
    for cp in trusted:
        if seen.get(cp.seq, cp.hash) != cp.hash:
            return CheckpointReport(
                False,
                f"equivocation: two signed checkpoints give entry {cp.seq} different hashes",
            )
        seen[cp.seq] = cp.hash
    latest = max(cp.seq for cp in trusted)
    for seq in sorted(seen):
        if seq > length:
            return CheckpointReport(
                False,
                f"truncated: a signed checkpoint records {seq} entries, the ledger holds {length}",
                latest,
            )
        if seq and by_seq.get(seq) != seen[seq]:
            return CheckpointReport(
                False,
                f"rewritten: entry {seq} does not match its signed checkpoint (the chain up "
                f"to it was edited and re-hashed)",
                latest,
            )
    return CheckpointReport(True, "", latest, len(seen), tuple(sorted(witnesses)))
