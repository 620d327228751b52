"""The node's answer to an indicator query (message type ``query.indicators``), inside its
SuperNode's ClientApp: its own records, its own rules, its own ledger.

1. The query is read and checked against this node's definitions and policy: at most
   ``indicators-max-epsilon`` per query (node config, default 3), cells below the larger of the
   query's and the node's ``indicators-min-count`` (default 10) suppressed.
2. The patients: every Patient of the node's FHIR API with ``$everything``, kept only when the
   consent registry permits ``HQUALIMP`` to the authority for :data:`INDICATOR_CLASSES`
   (default deny, as for research cohorts). The ``json`` source (tests and the bench) reads one
   file of patients, each with the purposes its consent permits.
3. The exact tally (:func:`counting.tally`), then ε is charged to the node's privacy ledger
   (``charge(..., kind="quality-indicators")``, δ = 0) under an id this node generates
   (``ind-<random>``; a spent ε or δ budget declines), then the
   noisy counts (:func:`release.release`, OS CSPRNG) pass the egress rule and leave.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from federated.egress import check_indicator_reply
from federated.indicators.counting import tally
from federated.indicators.definitions import IndicatorError, IndicatorSet, default_indicators
from federated.indicators.mechanism import csprng
from federated.indicators.query import IndicatorQuery, histograms, metric_key
from federated.indicators.release import release
from federated.node_data import setting

__all__ = [
    "QUALITY_PURPOSE",
    "INDICATOR_CLASSES",
    "LEDGER_TASK",
    "MESSAGE_TYPE",
    "answer",
    "allowed_counts",
    "load_patients",
]

log = logging.getLogger("ipjms.federated.indicators")

QUALITY_PURPOSE = "HQUALIMP"
# The consent classes the indicators read (alerts and Tasks have no class of their own in the
# consent vocabulary; they are the care plan's).
INDICATOR_CLASSES = ("Patient", "Encounter", "Condition", "Observation", "CarePlan")
LEDGER_TASK = "quality-indicators"
MESSAGE_TYPE = "query.indicators"
QUERY_RECORD = "query"
PatientLoader = Callable[[Mapping[str, Any]], Iterator[Sequence[Mapping[str, Any]]]]


def allowed_counts(query: IndicatorQuery, definitions: IndicatorSet) -> frozenset[str]:
    """Every metric name a node's answer to ``query`` may carry."""
    return frozenset(
        metric_key(h.indicator.id, h.dimension, value, h.side)
        for h in histograms(query, definitions)
        for value in definitions.values(h.dimension)
    )


def _org(context: Context) -> str:
    return str(setting(context.node_config, "org-id", f"node-{context.node_id}"))


def _reply(msg: Message, context: Context, metrics: dict[str, Any], allowed: frozenset[str],
           reason: str = "") -> Message:  # fmt: skip
    status: dict[str, Any] = {"org": _org(context), "status": "declined" if reason else "ok"}
    if reason:
        status["reason"] = reason
    content = RecordDict({"metrics": MetricRecord(metrics), "status": ConfigRecord(status)})
    check_indicator_reply(content, allowed)  # nothing else leaves the node
    return Message(content, reply_to=msg)


def _json_patients(node_config: Mapping[str, Any]) -> Iterator[Sequence[Mapping[str, Any]]]:
    """Tests and bench: ``[{"consents": ["HQUALIMP", …], "resources": [...]}, …]``."""
    doc = json.loads(Path(str(node_config["indicator-data"])).read_text())
    for record in doc:
        if QUALITY_PURPOSE in record.get("consents", []):
            yield record["resources"]


def _fhir_patients(node_config: Mapping[str, Any]) -> Iterator[Sequence[Mapping[str, Any]]]:
    from consent.client import ConsentClient
    from federated.cohort import BackendTokenSource, ConsentEligibility, FhirCohortReader
    from federated.pseudonyms import from_node_config
    from trust.pki import load_org

    fhir_url = str(node_config["fhir-url"])
    tokens = BackendTokenSource(
        fhir_url,
        str(node_config["client-id"]),
        str(node_config["client-key"]),
        str(setting(node_config, "scope", "system/*.rs")),
    )
    creds = load_org(str(node_config["org-dir"]))
    consent = ConsentClient(str(node_config["consent-url"]), creds)
    eligibility = ConsentEligibility(
        consent,
        from_node_config(node_config, creds),
        str(node_config["authority"]),
        purpose=QUALITY_PURPOSE,
        classes=INDICATOR_CLASSES,
    )
    reader = FhirCohortReader(fhir_url, tokens)
    try:
        for patient in reader.patients():
            if eligibility.eligible(patient):
                records = reader.everything(str(patient["id"]))
                yield [patient, *(r for r in records if r.get("resourceType") != "Patient")]
    finally:
        reader.close()
        consent.close()


def load_patients(node_config: Mapping[str, Any]) -> Iterator[Sequence[Mapping[str, Any]]]:
    """The consented patients' resources, one list per patient (nothing leaves the node)."""
    source = str(setting(node_config, "source", "fhir"))
    if source == "json":
        return _json_patients(node_config)
    if source == "fhir":
        return _fhir_patients(node_config)
    raise ValueError(f"unknown data source {source!r} for indicators")


def answer(
    msg: Message,
    context: Context,
    *,
    definitions: IndicatorSet | None = None,
    patients: PatientLoader = load_patients,
) -> Message:
    """The node's reply to one indicator query."""
    from federated.budget import BudgetExceeded
    from federated.client_app import ledger_for

    defs = definitions or default_indicators()
    cfg = msg.content.config_records[QUERY_RECORD]
    try:
        query = IndicatorQuery.from_config(dict(cfg))
        query.check(defs)
    except IndicatorError as exc:
        log.info("indicator query refused: %s", exc)
        return _reply(
            msg, context, {"declined": 1}, frozenset(),
            "indicator query not answerable with this node's definitions",
        )  # fmt: skip
    allowed = allowed_counts(query, defs)
    max_eps = float(setting(context.node_config, "indicators-max-epsilon", 3.0))
    if query.epsilon > max_eps + 1e-12:
        return _reply(
            msg, context, {"declined": 1}, allowed,
            f"indicator query asks for ε={query.epsilon:.2f}, this node allows at most "
            f"{max_eps:.2f}",
        )  # fmt: skip
    exact = tally(patients(context.node_config), defs, query.indicators, query.period, query.as_of)
    ledger = ledger_for(context.node_config)
    try:  # charged before anything computed from the records leaves (pure ε-DP: δ = 0)
        ledger.charge(f"ind-{uuid.uuid4().hex}", query.epsilon, 0.0, kind=LEDGER_TASK)
    except BudgetExceeded as exc:
        return _reply(msg, context, {"declined": 1}, allowed, str(exc))
    finally:
        ledger.engine.dispose()
    min_count = int(setting(context.node_config, "indicators-min-count", 10))
    counts = release(exact, query, defs, csprng(), min_count=min_count)
    log.info(
        "indicator query answered: %d patients counted, %d counts released, ε=%.2f charged",
        exact.patients,
        len(counts),
        query.epsilon,
    )
    return _reply(msg, context, {**counts, "epsilon": float(query.epsilon), "declined": 0}, allowed)
