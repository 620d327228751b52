"""The torch risk models (logistic regression, a small MLP) and their arrays on the wire.

A model travels as an ordered mapping ``parameter name → numpy array`` (its ``state_dict``);
nothing else about a node's training leaves it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

__all__ = ["MODEL_KINDS", "make_model", "get_arrays", "set_arrays", "predict_proba"]

MODEL_KINDS = ("logreg", "mlp")


class LogisticRegression(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class SmallMLP(nn.Module):
    def __init__(self, n_features: int, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.act = nn.Tanh()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x))).squeeze(-1)


def make_model(kind: str, n_features: int, *, seed: int = 0) -> nn.Module:
    """A freshly initialised model (seeded, so every party starts from the same weights)."""
    if n_features < 1:
        raise ValueError("a model needs at least one feature")
    torch.manual_seed(seed)
    if kind == "logreg":
        model: nn.Module = LogisticRegression(n_features)
        nn.init.zeros_(model.linear.weight)  # type: ignore[union-attr,arg-type]
        nn.init.zeros_(model.linear.bias)  # type: ignore[union-attr,arg-type]
        return model
    if kind == "mlp":
        return SmallMLP(n_features)
    raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")


def get_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    state = model.state_dict()
    return OrderedDict(
        (name.removeprefix("_module."), t.detach().cpu().numpy().copy())
        for name, t in state.items()
    )


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    own = model.state_dict()
    if set(own) != set(arrays):
        raise ValueError(f"model parameters {sorted(own)} do not match {sorted(arrays)}")
    for name, value in arrays.items():
        if tuple(own[name].shape) != tuple(value.shape):
            raise ValueError(
                f"parameter {name} has shape {value.shape}, expected {own[name].shape}"
            )
    model.load_state_dict(
        {
            name: torch.as_tensor(np.asarray(value), dtype=torch.float32)
            for name, value in arrays.items()
        }
    )


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32))
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64)
