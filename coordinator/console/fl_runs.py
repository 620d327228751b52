"""Federated training runs started from the console.

``parse_run_request`` (pure) checks the analyst's form: ε per node in (0, 10], rounds 1–20.
``RunLauncher`` starts ``ipjms fl run`` — the same command the demo and an operator use — as a
background process against the authority's SuperLink (its data folder), with the authority's
credentials and the coordinator's own model registry URL, under a label it makes itself
(``console-<hex>``); one run at a time. ``list_runs`` reads the SuperLink's training run files
(``runs/<label>.json``: completed with the model card and registry id, or failed with the
reason; ``runs/<label>.log``: the rounds as they are reported) and, for a run this console
started, its process: running while it runs, failed if it exits non-zero. The coordinator may
not import ``federated``, so this reads the files itself."""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RunRequest",
    "RunRequestError",
    "RunLauncher",
    "parse_run_request",
    "node_budgets",
    "MAX_EPSILON",
]

MAX_EPSILON = 10.0
MAX_ROUNDS = 20
LOG_TAIL = 40  # progress lines shown per run


class RunRequestError(ValueError):
    """The form asks for something the console will not start (the message says what)."""


@dataclass(frozen=True)
class RunRequest:
    epsilon: float
    rounds: int


def parse_run_request(epsilon: str, rounds: str) -> RunRequest:
    try:
        eps = float(epsilon.strip())
    except ValueError:
        raise RunRequestError("ε must be a number") from None
    if not math.isfinite(eps) or not 0 < eps <= MAX_EPSILON:
        raise RunRequestError(f"ε must be greater than 0 and at most {MAX_EPSILON:g}")
    text = rounds.strip()
    if not text.isdigit():
        raise RunRequestError("rounds must be a whole number")
    n = int(text)
    if not 1 <= n <= MAX_ROUNDS:
        raise RunRequestError(f"rounds must be between 1 and {MAX_ROUNDS}")
    return RunRequest(eps, n)


@dataclass
class _Started:
    process: subprocess.Popen[bytes]
    request: RunRequest
    started: float


class RunLauncher:
    def __init__(
        self,
        federated_dir: Path | None,
        authority_dir: Path | None,
        registry_url: str | None,
        log_dir: Path,
    ) -> None:
        self.federated_dir = federated_dir
        self.authority_dir = authority_dir
        self.registry_url = registry_url
        self.log_dir = log_dir
        self.started: dict[str, _Started] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.federated_dir and self.authority_dir and self.registry_url)

    def running(self) -> str | None:
        for label, s in self.started.items():
            if s.process.poll() is None:
                return label
        return None

    def command(self, label: str, req: RunRequest) -> list[str]:
        assert self.federated_dir and self.authority_dir and self.registry_url
        return [
            sys.executable, "-m", "deploy.cli", "fl", "run",
            "--data-dir", str(self.federated_dir), "--label", label,
            "--epsilon", f"{req.epsilon:g}", "--rounds", str(req.rounds),
            "--registry-url", self.registry_url, "--authority-dir", str(self.authority_dir),
        ]  # fmt: skip

    def start(self, req: RunRequest) -> str:
        """Start the run in the background; its label. RuntimeError if one is running."""
        with self._lock:
            busy = self.running()
            if busy:
                raise RuntimeError(f"run {busy} is still running")
            label = f"console-{secrets.token_hex(6)}"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / f"{label}.out").open("wb") as out:
                process = subprocess.Popen(
                    self.command(label, req),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.started[label] = _Started(process, req, time.time())
            return label

    def list_runs(self) -> list[dict[str, Any]]:
        """Every training run (newest first): label, status, ε, rounds, model id, card, the
        last progress lines, and the failure reason."""
        runs: dict[str, dict[str, Any]] = {}
        folder = self.federated_dir / "runs" if self.federated_dir else None
        if folder is not None and folder.is_dir():
            for path in folder.glob("*.json"):
                try:
                    doc = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if not isinstance(doc, dict) or "result" in doc:  # indicators runs: not here
                    continue
                status = {"completed": "done", "failed": "failed"}.get(str(doc.get("status")))
                if status is None:
                    continue
                card = doc.get("card") if isinstance(doc.get("card"), dict) else None
                runs[path.stem] = {
                    "label": path.stem,
                    "status": status,
                    "at": path.stat().st_mtime,
                    "model_id": doc.get("model_id"),
                    "card": card,
                    "reason": doc.get("reason"),
                    "budgets": _budgets(doc.get("node_budgets")),
                    "epsilon": None,
                    "rounds": None,
                }
        for label, s in self.started.items():
            code = s.process.poll()
            run = runs.setdefault(label, {"label": label, "status": "", "at": s.started})
            run.update(epsilon=s.request.epsilon, rounds=s.request.rounds)
            if code is None:
                run["status"] = "running"
            elif code != 0:
                run["status"] = "failed"
                run.setdefault("reason", None)
                run["reason"] = run["reason"] or self._exit_reason(label, code)
            elif not run["status"]:
                run["status"] = "failed"
                run["reason"] = "the run ended without a result file"
        for run in runs.values():
            run.setdefault("model_id", None)
            run.setdefault("card", None)
            run.setdefault("reason", None)
            run.setdefault("budgets", {})
            run["progress"] = self._progress(run["label"])
        return sorted(runs.values(), key=lambda r: r["at"], reverse=True)

    def _exit_reason(self, label: str, code: int) -> str:
        """The exit status and what the command said last (its own error message)."""
        try:
            out = (self.log_dir / f"{label}.out").read_text(errors="replace")
        except OSError:
            out = ""
        said = " ".join(out.split()[-60:])
        return f"ipjms fl run exited with status {code}" + (f": {said}" if said else "")

    def _progress(self, label: str) -> list[str]:
        if self.federated_dir is None:
            return []
        try:
            lines = (self.federated_dir / "runs" / f"{label}.log").read_text().splitlines()
        except OSError:
            return []
        return lines[-LOG_TAIL:]


_BUDGET_FIELDS = ("epsilon_used", "epsilon_budget", "delta_used", "delta_budget")


def _budgets(raw: object) -> dict[str, dict[str, float]]:
    """A run file's ``node_budgets`` (org → the node's ledger as its last reply reported it),
    keeping only complete, finite, non-negative figures."""
    out: dict[str, dict[str, float]] = {}
    if not isinstance(raw, dict):
        return out
    for org, figures in raw.items():
        if not isinstance(figures, dict):
            continue
        values = [figures.get(k) for k in _BUDGET_FIELDS]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        nums = [float(v) for v in values]  # type: ignore[arg-type]
        if all(math.isfinite(v) and v >= 0 for v in nums):
            out[str(org)] = dict(zip(_BUDGET_FIELDS, nums, strict=True))
    return out


def node_budgets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each node's privacy budget as it last reported it: for every organisation, the report
    in the newest run that carries one (``runs`` newest first, as :meth:`RunLauncher.list_runs`
    gives them) — spent and remaining ε and δ, and the run and time of the report."""
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        for org, b in (run.get("budgets") or {}).items():
            if org in latest:
                continue
            latest[org] = {
                "org": org,
                **b,
                "epsilon_remaining": max(0.0, b["epsilon_budget"] - b["epsilon_used"]),
                "delta_remaining": max(0.0, b["delta_budget"] - b["delta_used"]),
                "run": run["label"],
                "at": run["at"],
            }
    return [latest[org] for org in sorted(latest)]
