"""A federated run's parameters (the Flower run config) with their validation, and the tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from federated.feature_spec import FEATURE_NAMES, SPEC_ID
from federated.feature_spec import TASK as READMISSION_TASK

__all__ = ["TASKS", "STRATEGIES", "RunPlan", "PlanError"]

# task → (feature spec id, number of features); "csv" is the benchmark harness's generic task.
TASKS: dict[str, tuple[str, int]] = {READMISSION_TASK: (SPEC_ID, len(FEATURE_NAMES))}
STRATEGIES = ("fedavg", "fedadam")


class PlanError(ValueError):
    """A run was asked for with impossible parameters; the message says which."""


@dataclass(frozen=True)
class RunPlan:
    task: str = READMISSION_TASK
    rounds: int = 5
    epsilon: float = 3.0  # per node, whole run; 0 = non-private (benchmark baselines only)
    strategy: str = "fedavg"
    min_nodes: int = 2
    model: str = "logreg"
    lr: float = 0.5
    local_epochs: int = 2
    batch_size: int = 128
    max_grad_norm: float = 1.0
    server_lr: float = 0.1  # FedAdam η
    test_fraction: float = 0.25
    split_seed: int = 0
    seed: int = 0
    min_cohort: int = 0
    round_timeout: float = 300.0
    node_wait: float = 120.0
    run_label: str = ""
    n_features: int = 0  # 0: from the task's feature spec
    normalise: bool = False  # federated mean/sd scaling (benchmark CSVs)

    def __post_init__(self) -> None:
        if self.task not in TASKS and self.task != "csv":
            raise PlanError(f"unknown task {self.task!r}; known: {', '.join(sorted(TASKS))}")
        if self.rounds < 1:
            raise PlanError("rounds must be at least 1")
        if self.epsilon < 0:
            raise PlanError("ε must be positive")
        if self.strategy not in STRATEGIES:
            raise PlanError(f"unknown strategy {self.strategy!r}; use {' or '.join(STRATEGIES)}")
        if self.min_nodes < 1:
            raise PlanError("min nodes must be at least 1")

    @property
    def spec(self) -> str:
        return TASKS[self.task][0] if self.task in TASKS else "csv"

    @property
    def features(self) -> int:
        return self.n_features or TASKS[self.task][1]

    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunPlan:
        fields = cls.__dataclass_fields__
        kwargs: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name in fields:
                kind: Any = type(fields[name].default)
                kwargs[name] = kind(value) if kind is not bool else bool(value)
        return cls(**kwargs)

    def client_config(self) -> dict[str, Any]:
        """What each node needs to know about the run (sent with every message)."""
        return {
            "task": self.task,
            "model": self.model,
            "epsilon": float(self.epsilon),
            "rounds": self.rounds,
            "local-epochs": self.local_epochs,
            "lr": float(self.lr),
            "batch-size": self.batch_size,
            "max-grad-norm": float(self.max_grad_norm),
            "test-fraction": float(self.test_fraction),
            "split-seed": self.split_seed,
            "seed": self.seed,
            "min-cohort": self.min_cohort,
            "n-features": self.features,
            "run-label": self.run_label,
        }
