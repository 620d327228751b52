"""Local training (non-private or Opacus DP-SGD) and evaluation of a risk model.

Privacy is a wrapper around the same training loop: ``train(..., dp=DPConfig(...))`` makes the
model, optimiser and loader private with Opacus (Poisson sampling, per-sample clipping at
``max_grad_norm``, Gaussian noise calibrated so that the whole run — ``total_epochs`` over all
rounds — stays within ``(target_epsilon, delta)``), and reports the ε spent so far from the RDP
accountant, whose history is carried from round to round by the caller. The noise multiplier is
calibrated once, in the run's first round (a binary search over the RDP accountant, seconds per
call); the caller carries it to later rounds with the history (same data, same sampling rate,
so the same σ that recalibrating would give).
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

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


def default_delta(n: int) -> float:
    """δ for a cohort of n: one tenth of 1/n (the usual δ ≪ 1/n), capped at 1e-5·10."""
    return min(1e-4, 0.1 / max(n, 1))


def calibrate_noise(dp: DPConfig, sample_rate: float) -> float:
    """σ for which ``total_epochs`` at ``sample_rate`` spend at most (target ε, δ) — RDP."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        # the search tries large σ, where the best RDP order is the largest one Opacus has
        warnings.simplefilter("ignore")
        sigma = get_noise_multiplier(
            target_epsilon=dp.target_epsilon,
            target_delta=dp.delta,
            sample_rate=sample_rate,
            epochs=dp.total_epochs,
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


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    dp: DPConfig | None = None,
) -> TrainReport:
    """Train ``model`` in place on (x, y); with ``dp`` the update is (ε, δ)-DP for the run."""
    if len(x) == 0:
        raise ValueError("no training samples")
    torch.manual_seed(cfg.seed)
    dp_seed = _dp_seed(cfg) if dp is not None else cfg.seed
    loader = _loader(x, y, cfg.batch_size, dp_seed)  # under DP, its generator draws the batches
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.BCEWithLogitsLoss()
    engine = None
    trained: nn.Module = model
    if dp is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        sample_rate = 1 / len(loader)
        sigma = dp.noise_multiplier
        if sigma is None or dp.sample_rate != sample_rate:
            sigma = calibrate_noise(dp, sample_rate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trained, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(dp_seed + 1),
            )
        engine.accountant.history = compact_history(dp.history)  # type: ignore[assignment]
    started = time.perf_counter()
    trained.train()
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    total, batches = 0.0, 0
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            if len(xb) == 0:
                # Poisson sampling can draw an empty batch; it still counts as a DP step.
                optimizer.zero_grad()
                optimizer.step()
                continue
            optimizer.zero_grad()
            loss = loss_fn(trained(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss.item())
            batches += 1
    seconds = time.perf_counter() - started
    report = TrainReport(n=len(x), seconds=seconds, loss=total / max(batches, 1))
    if engine is not None and dp is not None:
        engine.accountant.history = compact_history(engine.accountant.history)  # type: ignore[assignment]
        report.epsilon = float(engine.accountant.get_epsilon(dp.delta))
        report.delta = dp.delta
        report.noise_multiplier = float(optimizer.noise_multiplier)  # type: ignore[attr-defined]
        report.sample_rate = sample_rate
        report.history = [
            (float(s), float(q), int(n))
            for s, q, n in engine.accountant.history  # type: ignore[attr-defined]
        ]
    if engine is not None:
        # Opacus wrapped the module with per-sample-gradient hooks; take them off again so the
        # caller's model (same parameters) can be trained or made private again.
        trained._close()  # type: ignore[operator]
    return report


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
