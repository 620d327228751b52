"""Local training (non-private, or DP-SGD with the patient as the privacy unit) and evaluation.

``train(..., dp=DPConfig(...), groups=patient_of_each_row)`` is user-level DP-SGD: each step
Poisson-samples *patients* (rate q = expected batch / patients, the count rounded to 10), sums
each sampled patient's per-discharge gradients (``torch.func`` per-sample gradients), clips the
sum to ``max_grad_norm`` — so a patient with many discharges is clipped as one — adds Gaussian
noise σ·C to the sum of clipped sums and steps with it divided by the expected patient count.
σ is calibrated once for the whole run (every round's steps, Opacus's RDP accountant and its
``get_noise_multiplier``) and carried with the accountant history ``[(σ, q, steps)]`` from
round to round by the caller; ε reported is per patient, from Opacus's ``RDPAccountant``.
An empty Poisson draw is a noise-only step, counted like any other.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "TrainConfig",
    "DPConfig",
    "TrainReport",
    "train",
    "evaluate",
    "default_delta",
    "calibrate_noise",
    "compact_history",
    "rdp_epsilon",
    "sampling_plan",
    "public_units",
    "unit_index",
]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.0
    seed: int = 0  # shuffling without DP (the run's seed, known to the server)
    # DP-SGD's Poisson sampling and noise: None (the default) draws a fresh secret seed from the
    # OS on every call, so the server, which chose ``seed``, cannot regenerate the noise and
    # subtract it from the update. Only a benchmark on one's own data fixes it (node config
    # ``dp-seed``), for repeatable tables.
    dp_seed: int | None = None


@dataclass(frozen=True)
class DPConfig:
    target_epsilon: float
    delta: float
    total_epochs: int  # epochs this node will train over the whole run (noise is calibrated on it)
    max_grad_norm: float = 1.0
    # RDP accountant history of earlier rounds of the same run: (noise multiplier, q, steps)
    history: tuple[tuple[float, float, int], ...] = ()
    # σ calibrated for the whole run in its first round (TrainReport.noise_multiplier), with the
    # sampling rate it was calibrated for; None → calibrate now
    noise_multiplier: float | None = None
    sample_rate: float | None = None


@dataclass
class TrainReport:
    n: int
    seconds: float
    loss: float
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)
    units: int = 0  # privacy units (patients) in the training split
    steps: int = 0  # DP-SGD steps of this call


DEFAULT_DELTA = 1e-5  # a node's δ per run unless its policy says otherwise (node_policy.py)


def default_delta(n: int = 0) -> float:
    """δ by rule, not by cohort size (δ = 0.1/n used to give the server the exact n): the
    node's fixed δ per run. ``n`` is accepted for old callers and ignored."""
    del n
    return DEFAULT_DELTA


def calibrate_noise(dp: DPConfig, sample_rate: float, steps: int) -> float:
    """σ for which ``steps`` steps at ``sample_rate`` spend at most (target ε, δ) — RDP."""
    return _calibrated_sigma(dp.target_epsilon, dp.delta, sample_rate, steps)


@functools.lru_cache(maxsize=256)
def _calibrated_sigma(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus's search (tens of RDP evaluations over every order, up to ~1 CPU-s) is a pure
    function of these four numbers: a process asked again for the same run shape answers from
    memory."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        # the search tries large σ, where the best RDP order is the largest one Opacus has
        warnings.simplefilter("ignore")
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    return float(sigma)


def compact_history(
    history: Iterable[tuple[float, float, int]],
) -> list[tuple[float, float, int]]:
    """The RDP accountant's history with steps of equal (σ, q) summed: RDP composes linearly in
    the number of steps, so ε is the same and the accountant sums one term per (σ, q)."""
    out: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        key = (float(sigma), float(q))
        out[key] = out.get(key, 0) + int(steps)
    return [(sigma, q, steps) for (sigma, q), steps in out.items()]


def _dp_seed(cfg: TrainConfig) -> int:
    """The seed of DP-SGD's sampling and noise: the node's own secret unless fixed for a bench."""
    return cfg.dp_seed if cfg.dp_seed is not None else secrets.randbits(62)


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    ds = TensorDataset(
        torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    )
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, generator=gen)


def unit_index(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Each row's privacy unit as 0…U-1 (its patient; every row its own unit without groups)."""
    if groups is None:
        return np.arange(n), n
    _, idx = np.unique(np.asarray(groups), return_inverse=True)
    return idx.astype(np.int64), int(idx.max()) + 1 if n else 0


def public_units(n_units: int) -> int:
    """The unit count DP-SGD's sampling rate and normalisation use: rounded to 10 like every
    count that leaves the node (the rate is on the model card), so q reveals no exact count."""
    from federated.datasets import round_count

    return max(10, round_count(n_units))


def sampling_plan(n_units: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(q, steps): Poisson rate over units for an expected ``batch_size`` units per step, and
    the steps of ``epochs`` epochs (1/q steps each)."""
    units = public_units(n_units)
    q = min(1.0, batch_size / units)
    per_epoch = max(1, round(1 / q))
    return q, per_epoch * max(1, epochs)


def rdp_epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """ε of an RDP accountant history [(σ, q, steps)] at δ (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = compact_history(history)  # type: ignore[assignment]
    if not acc.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta))


_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_BEFORE = 0


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Train on one torch intra-op thread (issue 19). This module's tensors are small — a batch
    of a few hundred rows by tens of features, one gradient row per patient — so OpenMP's
    fork-join per operation costs more than the operation: on the 2-core bench machine under
    load, the per-patient ``index_add_`` of a DP-SGD step took 17 ms wall on two threads and
    0.13 ms on one (a plain Linear forward alike). Both the private and the non-private path
    use it, so their ratio compares the algorithms. Threads training at once share one setting:
    the first in lowers it, the last out restores it."""
    global _THREADS_USERS, _THREADS_BEFORE
    with _THREADS_LOCK:
        if _THREADS_USERS == 0:
            _THREADS_BEFORE = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0:
                torch.set_num_threads(_THREADS_BEFORE)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    dp: DPConfig | None = None,
    groups: np.ndarray | None = None,
) -> TrainReport:
    """Train ``model`` in place on (x, y); with ``dp`` the update is (ε, δ)-DP for the run with
    the **patient** as the unit: ``groups`` names each row's patient (None: each row its own)."""
    if len(x) == 0:
        raise ValueError("no training samples")
    torch.manual_seed(cfg.seed)
    with _one_intra_op_thread():
        if dp is not None:
            return _train_dp(model, x, y, cfg, dp, groups)
        return _train_plain(model, x, y, cfg)


def _train_plain(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> TrainReport:
    loader = _loader(x, y, cfg.batch_size, cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    model.train()
    total, batches = 0.0, 0
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss.item())
            batches += 1
    return TrainReport(
        n=len(x), seconds=time.perf_counter() - started, loss=total / max(batches, 1)
    )


def _train_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    dp: DPConfig,
    groups: np.ndarray | None,
) -> TrainReport:
    """DP-SGD with the patient as the unit (user-level DP-SGD): each step samples *patients*
    by Poisson sampling at rate q, sums each sampled patient's per-discharge gradients, clips
    that sum to ``max_grad_norm`` (a patient with 26 discharges moves the model at most as far
    as one with 1), adds N(0, σ²C²) to the sum and divides by the expected number of patients
    q·U. The RDP accountant (Opacus's) counts (σ, q, steps): ε is per patient. An empty Poisson
    draw is a step like any other (noise only)."""
    from torch.func import functional_call, grad, vmap

    unit, n_units = unit_index(groups, len(x))
    q, steps_per_round = sampling_plan(n_units, cfg.batch_size, cfg.epochs)
    sigma = dp.noise_multiplier
    if sigma is None or dp.sample_rate != q:
        total_steps = steps_per_round // max(1, cfg.epochs) * dp.total_epochs
        sigma = calibrate_noise(dp, q, total_steps)
    seed = _dp_seed(cfg)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    ut = torch.as_tensor(unit, dtype=torch.int64)
    names = [n for n, _ in model.named_parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    expected = q * public_units(n_units)
    clip = dp.max_grad_norm

    def loss_one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> Any:
        out = functional_call(model, params, (xi.unsqueeze(0),))
        return nn.functional.binary_cross_entropy_with_logits(out.reshape(()), yi)

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    model.train()
    started = time.perf_counter()  # training time, σ's calibration excluded (as before)
    for _ in range(steps_per_round):
        chosen = torch.rand(n_units, generator=gen) < q  # Poisson sampling over patients
        rows = chosen[ut]
        params = {n: p.detach() for n, p in model.named_parameters()}
        flat_size = sum(p.numel() for p in params.values())
        summed = torch.zeros(flat_size)
        if bool(rows.any()):
            xb, yb, ub = xt[rows], yt[rows], ut[rows]
            g = per_sample(params, xb, yb)
            flat = torch.cat([g[n].reshape(len(xb), -1) for n in names], dim=1)
            _, local = torch.unique(ub, return_inverse=True)
            per_unit = torch.zeros(int(local.max()) + 1, flat_size).index_add_(0, local, flat)
            norms = per_unit.norm(dim=1)
            factor = (clip / (norms + 1e-12)).clamp(max=1.0)
            summed = (per_unit * factor[:, None]).sum(dim=0)
        noisy = (summed + torch.normal(0.0, sigma * clip, (flat_size,), generator=noise_gen)) / (
            expected
        )
        offset = 0
        for p in model.parameters():
            k = p.numel()
            p.grad = noisy[offset : offset + k].reshape(p.shape).clone()
            offset += k
        optimizer.step()
        optimizer.zero_grad()
    history = compact_history([*dp.history, (float(sigma), q, steps_per_round)])
    return TrainReport(
        n=len(x),
        seconds=time.perf_counter() - started,
        loss=float("nan"),  # not computed under DP: it never leaves the node (egress.py)
        epsilon=rdp_epsilon(history, dp.delta),
        delta=dp.delta,
        noise_multiplier=float(sigma),
        sample_rate=q,
        history=history,
        units=n_units,
        steps=steps_per_round,
    )


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC, Brier score, accuracy (threshold 0.5), log loss on a held-out split."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    from federated.models import predict_proba

    p = predict_proba(model, x)
    both = len(set(np.asarray(y).tolist())) == 2
    return {
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "accuracy": float(accuracy_score(y, (p >= 0.5).astype(int))),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
    }
