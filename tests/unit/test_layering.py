"""The layering contracts in pyproject.toml ([tool.importlinter]) hold, and they can fail: a copy of
the packages with one forbidden import added is refused, naming the contract it breaks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "node",
    "coordinator",
    "consent",
    "federated",
    "protos",
    "trust",
    "servicekit",
    "deploy",
)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"lint-imports not installed beside {sys.executable} (pip install -e '.[dev]')")
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The project's packages and pyproject.toml, copied (no tests, no venv)."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_repository_keeps_every_layering_contract(tree_copy: Path) -> None:
    result = _lint(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden_import", "contract"),
    [
        ("trust/_broken.py", "import node.app", "trust imports only trust and servicekit"),
        # only trust.envelope_wire may import the protos stubs; any other trust module may not
        (
            "trust/_broken.py",
            "import protos.ipjms.exchange.v1.exchange_pb2",
            "trust imports only trust and servicekit",
        ),
        ("servicekit/_broken.py", "import trust.tokens", "servicekit imports nothing of ours"),
        ("node/_broken.py", "import coordinator.queue", "never import each other"),
        ("federated/_broken.py", "import deploy.launcher", "only deploy imports deploy"),
        # the offline node commands migrate through node.schemas without loading a router
        ("node/schemas.py", "import node.api.feature", "node.schemas (the migrations"),
        ("consent/policy_broken.py", "x = 1", None),  # a harmless module: still kept
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree_copy: Path, module: str, forbidden_import: str, contract: str | None
) -> None:
    (tree_copy / module).write_text(f"{forbidden_import}\n")
    result = _lint(tree_copy)
    if contract is None:
        assert result.returncode == 0, result.stdout + result.stderr
        return
    assert result.returncode != 0, result.stdout
    # "NAME BROKEN", or "NAME BROKEN (1 ignored import)" for a contract with an allowed exception
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line.split()]
    assert any(contract in line for line in broken), result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout
