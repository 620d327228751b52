"""Demo chapter: the region's quality indicators by federated analytics under DP (issue 18).

``start`` has nothing to start: the analytics run uses the authority's SuperLink and the nodes'
SuperNodes that the federated chapter brought up.

``run`` (after the federated chapter, whose research patients consented to HQUALIMP as well —
all but every fifth): ``ipjms fl indicators`` asks every node for five indicators (30-day
readmission, mean length of stay, hypertension and diabetes control, pathway enrolment) over
the last year of the synthetic history to now, with ε = 3 per node (the nodes' per-query
maximum; their ledgers hold 10, training spent 3); each node counts its HQUALIMP patients, adds
discrete Laplace noise, charges its ε ledger and suppresses cells under 5; the chapter prints
the region's figures with their intervals, and where each cell was suppressed. With about 24
consenting patients per node the noise is of the order of the counts — the intervals say so;
``bench/indicators.py`` measures accuracy on thousands of patients per site.
The result is written to ``<workdir>/indicators.json`` (what the authority console shows).
"""

from __future__ import annotations

import os
import subprocess

from deploy.demo.network import DemoNetwork
from deploy.launcher import ipjms_command

__all__ = ["start", "run"]

PERIOD_START = "2025-01-01"  # the synthetic history's last year (it ends 2026-01-01) up to now
EPSILON = "3"
MIN_COUNT = "5"  # demo-sized cohorts (24 HQUALIMP patients per node); the CLI's default is 10
INDICATORS = "readmission-30d-all,length-of-stay-mean,htn-control,dm-control,pathway-enrolment"


def start(net: DemoNetwork) -> None:
    """Nothing to start (the federated chapter's SuperLink and SuperNodes are reused)."""


def run(net: DemoNetwork) -> None:
    fed = net.facts["federated"]
    out = net.workdir / "indicators.json"
    title = f"Regional quality indicators: federated counts, discrete Laplace noise, ε={EPSILON}"
    with net.step(title) as notes:
        r = subprocess.run(
            ipjms_command(
                *("fl", "indicators", "--data-dir", str(fed["data_dir"]), "--out", str(out)),
                *("--from", PERIOD_START, "--epsilon", EPSILON, "--min-count", MIN_COUNT),
                *("--indicators", INDICATORS, "--min-nodes", str(len(net.node_specs))),
            ),
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "160"},
            timeout=900,
        )
        notes += [line for line in r.stdout.splitlines() if line.strip()]
        if r.returncode != 0:
            notes.append(r.stderr[-1500:])
            raise RuntimeError("the indicators run failed")
        notes.append(
            "(each figure: ε per cell, noise scale and a 95 % interval that includes the noise; "
            "cells under the minimum count are suppressed at the node and say so. About 24 "
            "consenting patients per node: the noise is of the order of the counts, as the "
            "intervals show — bench/indicators.py measures the error on three synthetic sites "
            "of thousands of patients; federated/indicators/README.md)"
        )
