"""A node's privacy-budget ledger: cumulative ε across federated runs, refused beyond budget.

One SQLite (or PostgreSQL) table in the node's / SuperNode's data dir. A run *reserves* its
target ε when the node first trains for it (before any update leaves), so a run can never spend
more than the node has left; later rounds of the same run record the ε actually spent so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Column, Float, MetaData, String, Table, select
from sqlalchemy.engine import Engine

__all__ = ["BudgetExceeded", "BudgetEntry", "PrivacyBudgetLedger"]

_metadata = MetaData()
runs = Table(
    "fl_privacy_budget",
    _metadata,
    Column("run_id", String(64), primary_key=True),
    Column("task", String(64), nullable=False),
    Column("reserved_epsilon", Float, nullable=False),
    Column("spent_epsilon", Float, nullable=False, default=0.0),
    Column("delta", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


class BudgetExceeded(Exception):
    """The node's cumulative ε would exceed its budget; the message says by how much."""


@dataclass(frozen=True)
class BudgetEntry:
    run_id: str
    task: str
    reserved_epsilon: float
    spent_epsilon: float
    delta: float


class PrivacyBudgetLedger:
    def __init__(self, engine: Engine, budget: float) -> None:
        if budget <= 0:
            raise ValueError("the privacy budget must be positive")
        self.engine = engine
        self.budget = budget
        _metadata.create_all(engine)

    def used(self) -> float:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs.c.reserved_epsilon)).all()
        return float(sum(r[0] for r in rows))

    def entry(self, run_id: str) -> BudgetEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
        if row is None:
            return None
        return BudgetEntry(row.run_id, row.task, row.reserved_epsilon, row.spent_epsilon, row.delta)

    def reserve(self, run_id: str, task: str, epsilon: float, delta: float) -> BudgetEntry:
        """Reserve ``epsilon`` for ``run_id`` (idempotent per run) or raise BudgetExceeded."""
        if epsilon <= 0:
            raise ValueError("ε must be positive")
        now = time.time()
        with self.engine.begin() as conn:  # one transaction: check and write together
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
            if row is not None:
                return BudgetEntry(
                    row.run_id, row.task, row.reserved_epsilon, row.spent_epsilon, row.delta
                )
            used = float(sum(r[0] for r in conn.execute(select(runs.c.reserved_epsilon)).all()))
            if used + epsilon > self.budget + 1e-9:
                raise BudgetExceeded(
                    f"privacy budget spent: used {used:.2f} of {self.budget:.2f} "
                    f"(this run asks for ε={epsilon:.2f})"
                )
            conn.execute(
                runs.insert().values(
                    run_id=run_id,
                    task=task,
                    reserved_epsilon=epsilon,
                    spent_epsilon=0.0,
                    delta=delta,
                    created_at=now,
                    updated_at=now,
                )
            )
        return BudgetEntry(run_id, task, epsilon, 0.0, delta)

    def record_spent(self, run_id: str, spent: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id)
                .values(spent_epsilon=spent, updated_at=time.time())
            )
