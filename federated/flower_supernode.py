"""``python -m federated.flower_supernode --heartbeat-interval S -- ARGS…``: Flower's own
``flower-supernode ARGS…``, announcing a heartbeat interval of ``S`` seconds to the SuperLink.

flwr 1.32.1 has no option for it: its SuperNode sends ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s) in
``ActivateNode`` and every ``SendNodeHeartbeat``, and heartbeats every (interval − 5 s) × 0.7–0.9.
The SuperLink takes the interval from the request (it refuses one outside
[``HEARTBEAT_MIN_INTERVAL``, ``HEARTBEAT_MAX_INTERVAL``] = [10, 1800] s) and marks the node
offline when no heartbeat came for ``HEARTBEAT_PATIENCE`` (2) × interval: with 30 s a crashed or
stopped SuperNode stays "online" for up to a minute — a run's round waits that long for its
reply, and the SuperLink refuses to activate the node again until then. A shorter interval
detects a lost node sooner at the cost of more heartbeat calls (one per 3.5–4.5 s at 10 s).

The interval is set in the two places of this process that read the constant at call time — the
grpc-rere connection (the interval it sends) and ``supercore.heartbeat`` (the sender's period) —
and nowhere else: the ClientApp tokens of the SuperNode's own state keep Flower's default (their
heartbeats come from the ClientApp processes, which are not started through this module). It
runs in the supervised process itself, not as one more process: ``ipjms fl supernode`` starts it
where it used to start ``flower-supernode`` (federated/deployment.py ``supernode_args``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["DEFAULT_INTERVAL", "MAX_INTERVAL", "MIN_INTERVAL", "check_interval", "main"]

# flwr.common.constant's values (1.32.1), here so that the CLI can check an interval without
# importing Flower; `set_heartbeat_interval` checks them against the installed Flower.
DEFAULT_INTERVAL = 30.0
MIN_INTERVAL = 10.0
MAX_INTERVAL = 1800.0


def check_interval(seconds: float) -> str | None:
    """Why ``seconds`` cannot be a SuperNode's heartbeat interval (``None``: it can)."""
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        return (
            f"the heartbeat interval must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} "
            f"seconds (the SuperLink refuses others), got {seconds:g}"
        )
    return None


def set_heartbeat_interval(seconds: float) -> None:
    """Make this process's Flower SuperNode announce and keep ``seconds``."""
    from flwr.client.grpc_rere_client import connection
    from flwr.common import constant
    from flwr.supercore import heartbeat

    flower = (constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL)
    if flower != (MIN_INTERVAL, MAX_INTERVAL):  # pragma: no cover - another Flower version
        raise RuntimeError(f"Flower's heartbeat bounds are {flower}, not the ones checked here")
    problem = check_interval(seconds)
    if problem:
        raise ValueError(problem)
    for module in (connection, heartbeat):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # pragma: no cover
            raise RuntimeError(f"{module.__name__} no longer reads HEARTBEAT_DEFAULT_INTERVAL")
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


def main(argv: Sequence[str]) -> None:
    if len(argv) < 3 or argv[0] != "--heartbeat-interval" or argv[2] != "--":
        usage = "usage: python -m federated.flower_supernode --heartbeat-interval S -- ARGS…"
        raise SystemExit(usage)
    try:
        set_heartbeat_interval(float(argv[1]))
    except ValueError as exc:
        raise SystemExit(f"flower_supernode: {exc}") from None
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[3:]]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
