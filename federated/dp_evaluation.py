"""Evaluation metrics released under differential privacy, the patient as the unit (pure numpy).

The node scores its held-out patients with the server's model and builds a histogram of the
predicted probabilities (:data:`BINS` equal bins on [0, 1]) per label, each patient weighted so
that their discharges sum to 1 (a patient with 4 discharges adds ¼ at each). Adding or removing
one patient changes the histogram by at most 1 in L1, so Laplace noise of scale 1/ε on every
cell makes the histogram ε-DP (pure ε, δ = 0), whatever model the server sent. Every metric is
computed from the noisy histogram only (post-processing): AUROC and AUPRC over the bins (ties
within a bin count half), accuracy at 0.5 (a bin edge), Brier score and log loss at the bins'
centres, and the noisy patient total (rounded to 10 when it leaves). The metrics are
*patient-weighted* and *binned*: close to, not equal to, the per-discharge exact ones.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BINS", "score_histogram", "noisy_histogram", "histogram_metrics"]

BINS = 10


def score_histogram(p: np.ndarray, y: np.ndarray, units: np.ndarray) -> np.ndarray:
    """(2, BINS): row 0 negatives, row 1 positives; each unit's rows weigh 1/(its row count)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(int)
    _, inverse, counts = np.unique(np.asarray(units), return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    b = np.clip((p * BINS).astype(int), 0, BINS - 1)
    hist = np.zeros((2, BINS))
    np.add.at(hist, (np.clip(y, 0, 1), b), weight)
    return hist


def noisy_histogram(hist: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """ε-DP release (L1 sensitivity 1 per patient): Laplace(1/ε) per cell, negatives → 0."""
    if not epsilon > 0:
        raise ValueError("a DP release needs ε > 0")
    noisy = hist + rng.laplace(0.0, 1.0 / epsilon, size=hist.shape)
    return np.maximum(noisy, 0.0)


def histogram_metrics(hist: np.ndarray) -> dict[str, float]:
    neg, pos = hist[0], hist[1]
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    total = n_neg + n_pos
    centres = (np.arange(BINS) + 0.5) / BINS
    nan = float("nan")
    if n_neg > 0 and n_pos > 0:
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins
        auroc = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
        # precision/recall at thresholds from the top bin down (step-wise AUPRC)
        tp = np.cumsum(pos[::-1])
        fp = np.cumsum(neg[::-1])
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
        recall = tp / n_pos
        auprc = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    else:
        auroc = auprc = nan
    if total > 0:
        brier = float((pos * (1 - centres) ** 2 + neg * centres**2).sum() / total)
        half = BINS // 2
        accuracy = float((neg[:half].sum() + pos[half:].sum()) / total)
        c = np.clip(centres, 1e-7, 1 - 1e-7)
        log_loss = float(-(pos * np.log(c) + neg * np.log(1 - c)).sum() / total)
    else:
        brier = accuracy = log_loss = nan
    return {
        "auroc": auroc,
        "auprc": auprc,
        "brier": brier,
        "accuracy": accuracy,
        "log_loss": log_loss,
        "total": total if math.isfinite(total) else 0.0,
        # outcome events (positives) of the released histogram: post-processing, no extra ε
        "positives": n_pos if math.isfinite(n_pos) else 0.0,
    }
