"""The model card of a finished run and the wire form of a model's weights (pure).

What a card and the weights must hold is the wire contract :mod:`protos.model_card` (the
coordinator's registry checks uploads with it): ``build_card`` returns a card it accepts,
``encode_weights`` / ``decode_weights`` are numpy's side of its weights form.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import numpy as np

from federated.datasets import round_count
from protos.model_card import WEIGHT_DTYPE, array_bytes, check_weights

__all__ = ["build_card", "encode_weights", "decode_weights"]


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


def _sig(v: float | None) -> float | None:
    """Significant digits, not decimals: δ = 1e-7 must not print as 0.0."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(f"{v:.4g}")


PRIVACY_UNIT = "patient"
NOT_COVERED = (
    "DP protects each patient's records in the training split and in the evaluation release; "
    "it does not cover: the rounded counts (cohort and test sizes, to 10) and the sampling rate "
    "derived from them; which nodes took part, declined or dropped out; wall-clock timings; "
    "the fact that a patient is at a node at all; properties shared by many patients (group "
    "or population inferences); patients' records outside the consented research cohort "
    "(never read). Guarantees are per node (local DP-SGD), not central: no secure aggregation."
)


def _privacy(plan: Any, nodes: list[Any]) -> dict[str, Any]:
    if not plan.epsilon:
        return {"mechanism": "none", "unit": None, "target_epsilon_per_node": 0.0}
    return {
        "mechanism": (
            "patient-level DP-SGD (Poisson sampling of patients, each patient's summed gradient "
            "clipped, Gaussian noise; Opacus RDP accountant) + Laplace-noised evaluation "
            "histogram (pure ε, charged to each node's ledger)"
        ),
        "unit": PRIVACY_UNIT,
        "target_epsilon_per_node": plan.epsilon,
        "max_grad_norm": plan.max_grad_norm,
        "delta_rule": "each node's policy δ per run (default 1e-5), not derived from its cohort",
        "per_node": [
            {
                "org": n.org,
                "unit": PRIVACY_UNIT,
                "noise_multiplier": _sig(n.noise_multiplier),
                "sample_rate": _sig(n.sample_rate),
                "steps": n.steps,
                "epsilon_training": _sig(n.epsilon),
                "epsilon_evaluation": _sig(n.eval_epsilon),
                "epsilon": _sig(n.epsilon + n.eval_epsilon),
                "delta": _sig(n.delta),
            }
            for n in nodes
        ],
        "not_covered": NOT_COVERED,
    }


def build_card(result: Any, *, run_id: str = "") -> dict[str, Any]:
    """Task, feature spec, rounds, strategy, participating nodes with rounded cohort sizes,
    ε and δ per patient per node (σ, q, steps), what DP does not cover, drop-outs/declines and
    the federated (DP) evaluation metrics."""
    plan = result.plan
    nodes = sorted(result.participants(), key=lambda n: n.org)
    return {
        "task": plan.task,
        "feature_spec": plan.spec,
        "model": plan.model,
        "rounds": plan.rounds,
        "strategy": plan.strategy,
        "run_id": run_id,
        "run_label": plan.run_label,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "privacy": _privacy(plan, nodes),
        "participants": [
            {
                "org": n.org,
                "cohort_size_rounded": round_count(n.cohort),
                "test_size_rounded": round_count(n.test_size),
                "rounds": n.rounds,
                "epsilon": _sig(n.epsilon + n.eval_epsilon),  # per patient, training + evaluation
                "delta": _sig(n.delta),
                "evaluation": {k: _clean(v) for k, v in n.metrics.items()},
            }
            for n in nodes
        ],
        "dropped": result.dropped,
        "declined": result.declined,
        "evaluation": {k: _clean(v) for k, v in result.final_metrics.items()},
        "history": [
            {
                "round": h["round"],
                "nodes": h["nodes"],
                "evaluation": {k: _clean(v) for k, v in h["evaluation"].items()},
                "epsilon": {k: _clean(v) for k, v in h["epsilon"].items()},
                "train_wall_seconds": _clean(h.get("train_wall_seconds", float("nan"))),
                "local_train_seconds": _clean(h.get("local_train_seconds", float("nan"))),
            }
            for h in result.history
        ],
        "parameters": {k: list(v.shape) for k, v in result.arrays.items()},
    }


def encode_weights(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {
            "dtype": WEIGHT_DTYPE,
            "shape": list(a.shape),
            "data": base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode(),
        }
        for name, a in arrays.items()
    }


def decode_weights(wire: dict[str, Any]) -> dict[str, np.ndarray]:
    """Raises :class:`protos.model_card.ModelRejected` (a ValueError) naming the bad entry."""
    out = {}
    for name, spec in check_weights(wire).items():
        shape, raw = array_bytes(name, spec)
        out[name] = np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    return out
