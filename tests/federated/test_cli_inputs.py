"""Must-show 5: bad input to ``ipjms fl bench``, ``ipjms fl run`` and
``ipjms fl supernode`` → a clear error naming the file and column (bench) or the parameter (run,
supernode); nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from federated.cli import app

runner = CliRunner()


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _bench(folder: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["bench", "--data", str(folder), "--label", "y", *extra])
    return result.exit_code, " ".join(result.output.split())


GOOD = "a,b,y\n1,2,0\n2,3,1\n3,1,0\n4,4,1\n"


def test_folder_with_one_csv(tmp_path: Path) -> None:
    _write(tmp_path / "only.csv", GOOD)
    code, out = _bench(tmp_path)
    assert code == 2 and "found 1 CSV file(s)" in out and "at least 2" in out


def test_mismatched_columns_name_file_and_column(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", GOOD)
    _write(tmp_path / "b.csv", "a,c,y\n1,2,0\n2,3,1\n")
    code, out = _bench(tmp_path)
    assert (
        code == 2
        and "b.csv" in out
        and "column(s) c not in a.csv" in out
        and "missing column(s) b" in out
    )


def test_missing_label_column(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", GOOD)
    _write(tmp_path / "b.csv", "a,b,outcome\n1,2,0\n2,3,1\n")
    code, out = _bench(tmp_path)
    assert code == 2 and "b.csv" in out and "label column 'y' is missing" in out


def test_constant_label(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", GOOD)
    _write(tmp_path / "b.csv", "a,b,y\n1,2,0\n2,3,0\n")
    code, out = _bench(tmp_path)
    assert code == 2 and "b.csv" in out and "label column 'y' is constant" in out


def test_non_numeric_junk_names_file_column_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", GOOD)
    _write(tmp_path / "b.csv", "a,b,y\n1,2,0\n2,oops,1\n")
    code, out = _bench(tmp_path)
    assert (
        code == 2
        and "b.csv" in out
        and "column 'b', line 3" in out
        and "'oops' is not a number" in out
    )


def test_missing_markers_must_be_declared(tmp_path: Path) -> None:
    import math

    from federated.datasets import BenchInputError, read_bench_folder

    _write(tmp_path / "a.csv", GOOD)
    _write(tmp_path / "b.csv", "a,b,y\n1,unknown,0\n2,3,1\n")
    with pytest.raises(BenchInputError, match="column 'b', line 2"):
        read_bench_folder(tmp_path, "y")
    tables = read_bench_folder(tmp_path, "y", ["unknown"])
    assert math.isnan(tables[1].x[0, 1]) and tables[1].x[1, 1] == 3.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "mortality-90d", "--epsilon", "3"], "unknown task 'mortality-90d'"),
        (["--epsilon", "0"], "--epsilon must be positive"),
        (["--epsilon", "-2"], "--epsilon must be positive"),
        (["--strategy", "fedsgd", "--epsilon", "1"], "unknown strategy 'fedsgd'"),
    ],
)
def test_fl_run_rejects_bad_parameters(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["run", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("interval", ["5", "9.5", "1801", "nan", "-30"])
def test_fl_supernode_rejects_a_heartbeat_interval_the_superlink_refuses(
    tmp_path: Path, interval: str
) -> None:
    """Flower's SuperLink accepts a heartbeat interval in [10, 1800] s only: outside it the
    SuperNode is refused before it starts, with the range named (nothing is written)."""
    key = tmp_path / "client.pem"
    key.write_text("unused")
    result = runner.invoke(app, [
        "supernode", "--data-dir", str(tmp_path / "sn"), "--superlink", "127.0.0.1:9",
        "--org-dir", str(tmp_path), "--fhir-url", "http://127.0.0.1:9", "--client-id", "c",
        "--client-key", str(key), "--consent-url", "http://127.0.0.1:9", "--authority", "a",
        "--pseudonym-url", "http://127.0.0.1:9", "--heartbeat-interval", interval,
    ])  # fmt: skip
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "--heartbeat-interval: the heartbeat interval must be between 10 and 1800 seconds" in out
    assert not (tmp_path / "sn").exists()


def test_the_supernode_announces_the_heartbeat_interval_it_was_given() -> None:
    """``federated.flower_supernode`` sets the interval where Flower's SuperNode reads it: what
    it sends in ActivateNode and every heartbeat (grpc-rere connection), and its heartbeat
    period (supercore.heartbeat); Flower's own constant, read by the SuperNode's ClientApp
    token bookkeeping, keeps its default."""
    import subprocess
    import sys

    code = (
        "from federated.flower_supernode import set_heartbeat_interval as s; s(12.5)\n"
        "from flwr.client.grpc_rere_client import connection as c\n"
        "from flwr.supercore import heartbeat as h\n"
        "from flwr.common import constant as k\n"
        "print(c.HEARTBEAT_DEFAULT_INTERVAL, h.HEARTBEAT_DEFAULT_INTERVAL, "
        "k.HEARTBEAT_DEFAULT_INTERVAL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12.5", "12.5", "30"]
    bad = subprocess.run(
        [sys.executable, "-m", "federated.flower_supernode", "--heartbeat-interval", "3", "--"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "between 10 and 1800 seconds" in bad.stderr
