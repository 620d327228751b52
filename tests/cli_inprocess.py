"""Run an ``ipjms`` command inside the test process, for fixtures that only set state up.

``subprocess.run(ipjms_command(...))`` pays a fresh interpreter and its imports (~1 CPU-s) for
each ``node init``, ``node user add``, ``coordinator register-org``… a fixture runs; a region
ran seven of them. :func:`run_ipjms` invokes the same typer app (``deploy.cli.app``) with
typer's ``CliRunner``: the same arguments, the same environment (the test process's, overlaid
with ``env``, as the child had) and, like ``check=True``, an error carrying the command's output
when it exits nonzero.

Only for commands that leave no global state behind in the process (no logging setup, no signal
handlers, no ``os.environ`` writes: ``serve``, ``demo`` and ``up`` do, and stay processes). A test
whose point is the command itself — its exit status, its output, its process — runs it as a real
subprocess (``tests/node_api/test_node_cli.py``).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping

from typer.testing import CliRunner

from deploy.cli import app

__all__ = ["run_ipjms"]

# CliRunner swaps sys.stdout/stderr and os.environ for the whole process while a command runs:
# fixtures that set nodes up from a pool's threads (tests/federated/fl_net.py) take turns.
_ONE_AT_A_TIME = threading.Lock()


def run_ipjms(*args: str, env: Mapping[str, str] | None = None) -> str:
    """``ipjms *args`` in this process with ``env`` over ``os.environ`` (restored afterwards);
    returns its output, raises :class:`RuntimeError` with it on a nonzero exit."""
    with _ONE_AT_A_TIME:
        result = CliRunner().invoke(app, list(args), env=dict(env or {}), catch_exceptions=True)
    if result.exit_code != 0:
        detail = result.output
        if result.exc_info is not None and not isinstance(result.exception, SystemExit):
            detail += "".join(traceback.format_exception(*result.exc_info))
        raise RuntimeError(f"ipjms {' '.join(args)} exited {result.exit_code}:\n{detail}")
    return result.output
