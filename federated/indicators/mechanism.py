"""The noise: the discrete Laplace mechanism, sampled exactly, from a CSPRNG.

A released count is ``exact + Z`` with ``P(Z = z) ∝ exp(-|z| / b)`` over the integers; with
``b = Δ / ε`` (Δ the count's L1 sensitivity to one patient) this is ε-differentially private
(pure DP, δ = 0). The sampler is Canonne, Kamath and Steinke's exact algorithm ("The Discrete
Gaussian for Differential Privacy", NeurIPS 2020, Algorithm 2 with the Bernoulli(exp(-γ)) of
Algorithm 1): only integer and rational arithmetic on uniform integers, so none of the
floating-point artefacts of a textbook continuous Laplace (Mironov 2012). The integers come
from ``secrets.SystemRandom`` (the OS CSPRNG) unless a test passes its own seeded generator.
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction
from random import Random

__all__ = [
    "csprng",
    "as_fraction",
    "sample_discrete_laplace",
    "discrete_laplace_pmf",
    "discrete_laplace_variance",
]


def csprng() -> Random:
    """The generator every release uses: draws from the operating system's CSPRNG."""
    return secrets.SystemRandom()


def as_fraction(value: float | int | str | Fraction) -> Fraction:
    """An ε or a scale as an exact fraction (floats through their shortest decimal text)."""
    if isinstance(value, Fraction):
        return value
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _bernoulli(p: Fraction, rng: Random) -> bool:
    return rng.randrange(p.denominator) < p.numerator


def _bernoulli_exp(gamma: Fraction, rng: Random) -> bool:
    """True with probability exp(-gamma), gamma ≥ 0 rational (CKS20 Algorithm 1)."""
    while gamma > 1:
        if not _bernoulli_exp(Fraction(1), rng):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def sample_discrete_laplace(scale: Fraction | float | int, rng: Random | None = None) -> int:
    """One draw of Z with P(Z = z) ∝ exp(-|z| / scale), scale > 0 rational (CKS20 Alg. 2)."""
    b = as_fraction(scale)
    if b <= 0:
        raise ValueError("the scale must be positive")
    rng = rng or csprng()
    t, s = b.numerator, b.denominator  # scale = t / s
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        negative = _bernoulli(Fraction(1, 2), rng)
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_laplace_pmf(z: int, scale: float) -> float:
    """P(Z = z) for the discrete Laplace of this scale."""
    q = math.exp(-1.0 / scale)
    return (1 - q) / (1 + q) * q ** abs(z)


def discrete_laplace_variance(scale: float) -> float:
    """Var Z = 2q / (1 − q)² with q = exp(−1/scale)."""
    q = math.exp(-1.0 / scale)
    return 2 * q / (1 - q) ** 2
