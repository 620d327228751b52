"""The authority's analytics run on the deployment engine: one ``query.indicators`` message to
every connected node (the same SuperLink and SuperNodes as training — a query instead of a
model), the replies checked by the egress rule, the result published by
:func:`publish.result_document` and written to ``results-dir/<label>.json``.

A node that does not answer in time, answers with an error or breaks the egress rule is
recorded as ``dropped`` and nothing of its reply is used; a decline keeps its fixed reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federated.egress import EgressViolation, check_indicator_reply
from federated.indicators.definitions import IndicatorSet, default_indicators
from federated.indicators.node_answer import MESSAGE_TYPE, QUERY_RECORD, allowed_counts
from federated.indicators.publish import NodeAnswer, result_document
from federated.indicators.query import IndicatorQuery

__all__ = ["ANALYSIS", "run_query", "execute", "run_config"]

ANALYSIS = "indicators"


def _org(msg: Message, fallback: str) -> str:
    for record in msg.content.config_records.values():
        if "org" in record:
            return str(record["org"])
    return fallback


def run_query(
    grid: Grid,
    query: IndicatorQuery,
    definitions: IndicatorSet,
    *,
    min_nodes: int = 1,
    node_wait: float = 60.0,
    timeout: float = 600.0,
) -> list[NodeAnswer]:
    """Ask every connected node; their answers (ok, declined or dropped), by node id."""
    from federated.server_loop import RunFailed, _wait_for_nodes, send_and_receive

    nodes = sorted(_wait_for_nodes(grid, min_nodes, node_wait))
    sent = [
        Message(
            RecordDict({QUERY_RECORD: ConfigRecord(query.to_config())}),
            dst_node_id=nid,
            message_type=MESSAGE_TYPE,
        )
        for nid in nodes
    ]
    replies = {m.metadata.src_node_id: m for m in send_and_receive(grid, sent, timeout)}
    allowed = allowed_counts(query, definitions)
    answers = []
    for nid in nodes:
        reply, fallback = replies.get(nid), f"node-{nid}"
        if reply is None:
            answers.append(NodeAnswer(fallback, "dropped", "no answer before the timeout"))
            continue
        if reply.has_error():
            answers.append(NodeAnswer(fallback, "dropped", str(reply.error.reason)[:200]))
            continue
        try:
            check_indicator_reply(reply.content, allowed)
        except EgressViolation as exc:
            answers.append(
                NodeAnswer(fallback, "dropped", f"reply refused by the egress rule: {exc}")
            )
            continue
        org = _org(reply, fallback)
        status = next(iter(reply.content.config_records.values()), ConfigRecord({}))
        metrics = next(iter(reply.content.metric_records.values()))
        if status.get("status") == "declined":
            answers.append(NodeAnswer(org, "declined", str(status.get("reason", ""))))
            continue
        counts: dict[str, int] = {}
        for key, value in metrics.items():
            if key not in ("epsilon", "declined") and isinstance(value, int):
                counts[key] = value  # the egress rule checked: integers only
        charged = metrics.get("epsilon", 0.0)
        answers.append(
            NodeAnswer(
                org, "ok", "", counts, float(charged) if isinstance(charged, int | float) else 0.0
            )
        )
    usable = [a for a in answers if a.status == "ok"]
    if len(usable) < min_nodes:
        summary = ", ".join(f"{a.org}: {a.status} {a.reason}".strip() for a in answers)
        raise RunFailed(
            f"{len(usable)} node(s) answered, the run needs at least {min_nodes} ({summary})"
        )
    return sorted(answers, key=lambda a: a.org)


def run_config(
    query: IndicatorQuery, *, results_dir: Path, min_nodes: int, node_wait: float, timeout: float
) -> dict[str, Any]:
    """The Flower run config of an indicators run (the ServerApp dispatches on ``analysis``)."""
    return {
        **query.to_config(),
        "analysis": ANALYSIS,
        "results-dir": str(results_dir),
        "min-nodes": int(min_nodes),
        "node-wait": float(node_wait),
        "round-timeout": float(timeout),
    }


def execute(
    grid: Grid,
    config: Mapping[str, Any],
    run_id: str = "",
    *,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One indicators run; the outcome document is written to ``results-dir/<label>.json``."""
    from federated.server_loop import RunFailed

    definitions = default_indicators()
    query = IndicatorQuery.from_config(config)
    query.check(definitions)
    label = query.run_label or run_id
    results = Path(str(config.get("results-dir", "") or ".")).expanduser()
    results.mkdir(parents=True, exist_ok=True)
    outcome = results / f"{label}.json"
    report(
        f"indicators {label}: {len(query.indicators)} indicator(s), ε={query.epsilon:g} per "
        f"node, strata {', '.join(query.strata) or 'institution only'}"
    )
    started = time.monotonic()
    try:
        answers = run_query(
            grid,
            query,
            definitions,
            min_nodes=int(config.get("min-nodes", 1)),
            node_wait=float(config.get("node-wait", 60.0)),
            timeout=float(config.get("round-timeout", 600.0)),
        )
    except RunFailed as exc:
        outcome.write_text(json.dumps({"status": "failed", "reason": str(exc), "run_label": label}))
        report(f"indicators run failed: {exc}")
        raise
    doc = result_document(
        query, definitions, answers, run_id=run_id, seconds=time.monotonic() - started
    )
    outcome.write_text(
        json.dumps({"status": "completed", "run_label": label, "result": doc}, indent=1)
    )
    for a in answers:
        report(f"  {a.org}: {a.status}{' — ' + a.reason if a.reason else ''}")
    report(f"indicators {label} completed in {time.monotonic() - started:.1f}s")
    return doc
