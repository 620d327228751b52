"""Load a node's dataset for a run from its SuperNode ``node_config`` (all of it stays local).

``source = "fhir"``: the node's own FHIR API and consent registry (see cohort.py).
``source = "csv"``: one benchmark centre's CSV (the ``ipjms fl bench`` harness).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federated.datasets import NodeData, group_split, read_centre_csv, split_table
from federated.feature_spec import parse_instant

__all__ = ["LoadedData", "load_node_data", "setting"]


@dataclass
class LoadedData:
    data: NodeData
    patients_eligible: int  # patients (fhir) or rows (csv)


def setting(node_config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = node_config.get(key, default)
    return default if value in (None, "") else value


def load_node_data(
    node_config: Mapping[str, Any], *, test_fraction: float, seed: int
) -> LoadedData:
    source = str(setting(node_config, "source", "fhir"))
    if source == "csv":
        na = (
            str(setting(node_config, "na-values", "")).split(",")
            if setting(node_config, "na-values")
            else None
        )
        group = setting(node_config, "group-column", None)
        path, label = Path(node_config["csv-path"]), str(node_config["label"])
        table = (
            read_centre_csv(path, label, na, group=group)
            if na
            else read_centre_csv(path, label, group=group)
        )
        tr, te = split_table(table.y, table.groups, test_fraction, seed)
        if table.groups is None:  # each row its own unit
            return LoadedData(
                NodeData(table.x[tr], table.y[tr], table.x[te], table.y[te]), len(table.y)
            )
        g = table.groups
        return LoadedData(
            NodeData(table.x[tr], table.y[tr], table.x[te], table.y[te], g[tr], g[te]),
            len(np.unique(g)),
        )
    if source == "fhir":
        return _load_fhir(node_config, test_fraction=test_fraction, seed=seed)
    raise ValueError(f"unknown data source {source!r} in the node config")


def _load_fhir(node_config: Mapping[str, Any], *, test_fraction: float, seed: int) -> LoadedData:
    from consent.client import ConsentClient
    from federated.cohort import BackendTokenSource, ConsentEligibility, FhirCohortReader
    from federated.pseudonyms import from_node_config
    from trust.pki import load_signing_identity

    fhir_url = str(node_config["fhir-url"])
    tokens = BackendTokenSource(
        fhir_url,
        str(node_config["client-id"]),
        str(node_config["client-key"]),
        str(setting(node_config, "scope", "system/*.rs")),
    )
    creds = load_signing_identity(str(node_config["org-dir"]))
    consent = ConsentClient(str(node_config["consent-url"]), creds)
    eligibility = ConsentEligibility(
        consent, from_node_config(node_config, creds), str(node_config["authority"])
    )
    reader = FhirCohortReader(fhir_url, tokens)
    try:
        as_of = (
            parse_instant(str(setting(node_config, "as-of", "")))
            if setting(node_config, "as-of")
            else None
        )
        cohort = reader.cohort(eligibility, as_of=as_of)
    finally:
        reader.close()
        consent.close()
    samples = cohort.samples
    x = np.array([s.features for s in samples], dtype=np.float32).reshape(len(samples), -1)
    y = np.array([s.label or 0 for s in samples], dtype=np.float32)
    if len(samples) == 0:
        empty = np.zeros((0, x.shape[1] if x.ndim == 2 else 0), dtype=np.float32)
        return LoadedData(
            NodeData(empty, np.zeros(0, np.float32), empty, np.zeros(0, np.float32)),
            cohort.patients_eligible,
        )
    ids = [s.patient_id for s in samples]
    tr, te = group_split(ids, y, test_fraction, seed)
    _, unit = np.unique(np.array(ids), return_inverse=True)  # patient → integer unit
    return LoadedData(
        NodeData(x[tr], y[tr], x[te], y[te], unit[tr], unit[te]), cohort.patients_eligible
    )
