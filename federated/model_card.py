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


def build_card(result: Any, *, run_id: str = "") -> dict[str, Any]:
    """Task, feature spec, rounds, strategy, participating nodes with rounded cohort sizes,
    ε and δ per node, drop-outs/declines and the federated evaluation metrics."""
    plan = result.plan
    return {
        "task": plan.task,
        "feature_spec": plan.spec,
        "model": plan.model,
        "rounds": plan.rounds,
        "strategy": plan.strategy,
        "run_id": run_id,
        "run_label": plan.run_label,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "privacy": {
            "mechanism": "DP-SGD (Opacus, RDP accountant, Poisson sampling)"
            if plan.epsilon
            else "none",
            "target_epsilon_per_node": plan.epsilon,
            "max_grad_norm": plan.max_grad_norm,
        },
        "participants": [
            {
                "org": n.org,
                "cohort_size_rounded": round_count(n.cohort),
                "test_size_rounded": round_count(n.test_size),
                "rounds": n.rounds,
                "epsilon": _clean(n.epsilon),
                "delta": _clean(n.delta),
                "evaluation": {k: _clean(v) for k, v in n.metrics.items()},
            }
            for n in sorted(result.participants(), key=lambda n: n.org)
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
