"""``ipjms fl indicators`` refuses bad input with a message and exit status 2, before anything
is started; the result structure the console reads is found by ``latest_results``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federated.cli import app
from federated.indicators import latest_results

runner = CliRunner()


def _run(tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = ["indicators", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o.json"), *extra]
    result = runner.invoke(app, args)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--indicators", "guesswork"], "unknown indicator 'guesswork'"),
        (["--strata", "postcode"], "unknown stratum 'postcode'"),
        (["--epsilon", "0"], "ε must be in (0, 10]"),
        (["--epsilon", "50"], "ε must be in (0, 10]"),
        (["--min-count", "0"], "minimum cell count"),
        (["--from", "2026-02-01", "--to", "2026-01-01"], "--to must be after --from"),
        (["--from", "yesterday"], "--from/--to must be dates"),
        ([], "no SuperLink here"),
    ],
)
def test_bad_input_is_a_message_and_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    code, out = _run(tmp_path, *extra)
    assert code == 2 and message in out, out
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "runs").exists()


def test_latest_results_lists_completed_indicator_runs_newest_first(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    doc = {"format": "ipjms-quality-indicators/1", "run_label": "a"}
    (runs / "a.json").write_text(json.dumps({"status": "completed", "result": doc}))
    (runs / "b.json").write_text(json.dumps({"status": "failed", "reason": "x"}))
    (runs / "m.json").write_text(json.dumps({"status": "completed", "card": {}}))  # training
    (runs / "c.json").write_text("{not json")
    assert latest_results(tmp_path) == [doc]
