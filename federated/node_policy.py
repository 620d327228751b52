"""A node's own privacy policy, read from its SuperNode's node config — never from the server.

The server's run config says what it *asks* for (task, ε, rounds, …); this policy says what the
node *allows*, and the ClientApp (:mod:`federated.client_app`) enforces it on every message:

==========================  ==========  ===========================================================
node config key             default     meaning
==========================  ==========  ===========================================================
``dp-required``             true        a run asking for ε = 0 (no DP) is declined
``max-epsilon-run``         3.0         the largest ε (per patient) one run may spend at this node
``delta-run``               1e-5        δ of every run, by rule (never from the server or the
                                        cohort size: δ = 0.1/n gave the server the exact n)
``epsilon-budget``          10.0        ε over all runs and other releases (the ledger's budget)
``delta-budget``            1e-4        δ over all runs (basic composition)
``allowed-tasks``           by source   comma-separated tasks (fhir: ``readmission-30d``,
                                        csv: ``csv``)
``evaluation``              ``dp``      ``dp``: metrics from a Laplace-noised, patient-weighted
                                        score histogram, charged to the ledger; ``off``; ``exact``
                                        (allowed only for a CSV benchmark node, its own data)
``evaluation-share``        0.1         share of a run's ε set aside for its DP evaluations
``max-evaluations``         1           evaluation calls answered per run
``allow-query``             false       answer ``query`` (normalisation sums, CSV bench only)
``min-cohort``              0           fewer eligible patients → decline (the server's own
                                        ``min-cohort`` is ignored: it could force declines)
``test-fraction``           0.25        the held-out patients' share (the split is the node's)
``split-seed``              0           seed of that split
==========================  ==========  ===========================================================

The run parameters that fix a run's privacy cost and its meaning (:data:`FIXED_KEYS`) are taken
from a run's first message and must not change afterwards (:func:`changed_keys`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIXED_KEYS",
    "NodePolicy",
    "PolicyError",
    "RunTerms",
    "changed_keys",
    "fixed_params",
]

# what a run is, as the server announced it in the first message; later messages must agree
FIXED_KEYS = (
    "task",
    "model",
    "epsilon",
    "rounds",
    "local-epochs",
    "batch-size",
    "max-grad-norm",
    "lr",
    "n-features",
    "seed",
    "run-label",
)
EVALUATION_MODES = ("dp", "off", "exact")
_DEFAULT_TASKS = {"fhir": "readmission-30d", "csv": "csv"}


class PolicyError(ValueError):
    """The node config holds an impossible policy (the SuperNode's own configuration error)."""


def _get(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value in (None, "") else value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise PolicyError(f"not a yes/no value: {value!r}")


@dataclass(frozen=True)
class NodePolicy:
    source: str = "fhir"
    dp_required: bool = True
    max_epsilon_run: float = 3.0
    delta_run: float = 1e-5
    epsilon_budget: float = 10.0
    delta_budget: float = 1e-4
    allowed_tasks: frozenset[str] = frozenset({"readmission-30d"})
    evaluation: str = "dp"
    evaluation_share: float = 0.1
    max_evaluations: int = 1
    allow_query: bool = False
    min_cohort: int = 0
    test_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not self.max_epsilon_run > 0 or not self.epsilon_budget > 0:
            raise PolicyError("max-epsilon-run and epsilon-budget must be positive")
        if not 0 < self.delta_run < 1 or not 0 < self.delta_budget < 1:
            raise PolicyError("delta-run and delta-budget must be in (0, 1)")
        if self.evaluation not in EVALUATION_MODES:
            raise PolicyError(f"evaluation must be one of {', '.join(EVALUATION_MODES)}")
        if self.evaluation == "exact" and self.source != "csv":
            raise PolicyError("exact evaluation is allowed only for a CSV benchmark node")
        if not 0 < self.evaluation_share < 1 or self.max_evaluations < 0:
            raise PolicyError("evaluation-share must be in (0, 1), max-evaluations ≥ 0")
        if not 0 < self.test_fraction < 1:
            raise PolicyError("test-fraction must be between 0 and 1")

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> NodePolicy:
        source = str(_get(cfg, "source", "fhir"))
        tasks = str(_get(cfg, "allowed-tasks", _DEFAULT_TASKS.get(source, "")))
        try:
            return cls(
                source=source,
                dp_required=_flag(_get(cfg, "dp-required", True)),
                max_epsilon_run=float(_get(cfg, "max-epsilon-run", 3.0)),
                delta_run=float(_get(cfg, "delta-run", 1e-5)),
                epsilon_budget=float(_get(cfg, "epsilon-budget", 10.0)),
                delta_budget=float(_get(cfg, "delta-budget", 1e-4)),
                allowed_tasks=frozenset(t.strip() for t in tasks.split(",") if t.strip()),
                evaluation=str(_get(cfg, "evaluation", "dp")),
                evaluation_share=float(_get(cfg, "evaluation-share", 0.1)),
                max_evaluations=int(_get(cfg, "max-evaluations", 1)),
                allow_query=_flag(_get(cfg, "allow-query", False)),
                min_cohort=int(_get(cfg, "min-cohort", 0)),
                test_fraction=float(_get(cfg, "test-fraction", 0.25)),
                split_seed=int(_get(cfg, "split-seed", 0)),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PolicyError):
                raise
            raise PolicyError(f"node config: {exc}") from None

    def terms(self, epsilon: float) -> RunTerms:
        """How a run asking for ``epsilon`` is split (no check: see :meth:`refusal`)."""
        eval_eps = 0.0
        if self.evaluation == "dp" and self.max_evaluations and epsilon > 0:
            eval_eps = epsilon * self.evaluation_share / self.max_evaluations
        train_eps = epsilon - eval_eps * self.max_evaluations if eval_eps else epsilon
        return RunTerms(epsilon, train_eps, eval_eps, self.delta_run if epsilon > 0 else 0.0)

    def refusal(self, task: str, epsilon: float) -> str | None:
        """The decline reason for a run of ``task`` at ``epsilon``, or None if allowed."""
        if task not in self.allowed_tasks:
            return "task not allowed by this node's privacy policy"
        if not math.isfinite(epsilon) or epsilon < 0:
            return "this node requires differential privacy (ε > 0)"
        if epsilon == 0 and self.dp_required:
            return "this node requires differential privacy (ε > 0)"
        if epsilon > self.max_epsilon_run + 1e-12:
            return f"ε per run above this node's maximum of {self.max_epsilon_run:.2f}"
        return None


@dataclass(frozen=True)
class RunTerms:
    epsilon: float  # the run's whole ε at this node (reserved in the ledger)
    train_epsilon: float  # DP-SGD's target
    eval_epsilon: float  # per evaluation call (pure ε, Laplace)
    delta: float


def fixed_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-defining parameters of a message's config (missing ones as None)."""
    out: dict[str, Any] = {}
    for key in FIXED_KEYS:
        v = config.get(key)
        out[key] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
    return out


def changed_keys(first: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    now = fixed_params(config)
    return [k for k in FIXED_KEYS if first.get(k) != now[k]]
