"""The authority side of federated training: Flower ``ServerApp`` (Message API).

Started by the SuperLink for each ``ipjms fl run``. Reads the run's plan from the run config,
drives the rounds (:mod:`federated.server_loop`), writes progress and the result to the
authority's results directory (``results-dir``) and, when a registry is configured
(``registry-url`` + ``authority-dir``), stores the model with its card in the coordinator's model
registry. A run below the minimum of nodes fails with the reason in the result file.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federated.model_card import build_card
from federated.run_plan import RunPlan
from federated.server_loop import RunFailed, run_federated

__all__ = ["app", "execute"]

log = logging.getLogger("ipjms.federated.server")
app = ServerApp()


def execute(grid: Grid, run_config: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """One run: returns the result document (also written to ``results-dir``)."""
    plan = RunPlan.from_run_config(run_config)
    label = plan.run_label or run_id
    results_dir = Path(str(run_config.get("results-dir", "") or ".")).expanduser()
    results_dir.mkdir(parents=True, exist_ok=True)
    progress = results_dir / f"{label}.log"
    outcome_path = results_dir / f"{label}.json"

    def report(line: str) -> None:
        print(line, flush=True)
        with progress.open("a") as fh:
            fh.write(line + "\n")

    report(
        f"run {label}: task {plan.task} ({plan.spec}), {plan.rounds} rounds, {plan.strategy}, "
        f"ε={plan.epsilon:g} per patient per node, at least {plan.min_nodes} nodes"
    )
    doc: dict[str, Any]
    try:
        result = run_federated(grid, plan, report=report)
    except RunFailed as exc:
        report(f"run failed: {exc}")
        doc = {"status": "failed", "reason": str(exc), "run_label": label}
        doc["node_budgets"] = exc.budgets
        outcome_path.write_text(json.dumps(doc, indent=2))
        raise
    except Exception as exc:
        report(f"run failed: {type(exc).__name__}: {exc}")
        doc = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "run_label": label}
        doc["trace"] = traceback.format_exc()[-2000:]
        outcome_path.write_text(json.dumps(doc, indent=2))
        raise
    card = build_card(result, run_id=run_id)
    doc = {"status": "completed", "run_label": label, "card": card, "model_id": None}
    doc["node_budgets"] = result.budgets  # each node's ledger as it last reported it
    registry_url = str(run_config.get("registry-url", "") or "")
    if registry_url:
        from federated.registry_client import RegistryClient
        from trust.pki import load_org

        creds = load_org(str(run_config["authority-dir"]))
        verify: bool | str = str(run_config.get("registry-ca", "") or "") or True
        client = RegistryClient(registry_url, creds, verify=verify)
        try:
            doc["model_id"] = client.publish(
                card, result.arrays, publish=bool(run_config.get("publish", True))
            )
        finally:
            client.close()
        report(f"model {doc['model_id']} stored in the registry with its card")
    doc["replies_seen"] = result.replies_seen
    outcome_path.write_text(json.dumps(doc, indent=2))
    report(f"run {label} completed in {result.seconds:.1f}s")
    return doc


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    if config.get("analysis") == "indicators":  # a quality-indicator query, not training
        from federated.indicators.authority_run import execute as execute_indicators

        execute_indicators(grid, config, str(context.run_id))
        return
    execute(grid, config, str(context.run_id))
