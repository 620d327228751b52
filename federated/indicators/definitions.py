"""Quality indicators as data: ``definitions.json`` read and checked into typed definitions.

Each indicator is a numerator and a denominator over one node's own records, counted per
*unit* (a discharge, a patient, a follow-up, an alert) by a named counting function of
:mod:`federated.indicators.counting`, broken down by strata (age band, sex, pathway; the
institution is the node itself). ``contribution_cap`` bounds how many units one patient adds to
any count (the privacy unit is the patient), ``value_cap`` bounds what one unit adds to a
``mean`` indicator's numerator. Every indicator names its guideline source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "ALL",
    "COUNTERS",
    "IndicatorError",
    "Indicator",
    "IndicatorSet",
    "load_indicators",
    "default_indicators",
]

DEFAULT_FILE = Path(__file__).with_name("definitions.json")
ALL = "all"  # the stratum "everyone" (dimension and value)
KINDS = ("rate", "mean")
COUNTERS = (
    "readmission",
    "length_of_stay",
    "hypertension_control",
    "diabetes_control",
    "follow_up_completion",
    "alerts_acknowledged",
    "pathway_enrolment",
)


class IndicatorError(ValueError):
    """A definition file or a query names something impossible; the message says what."""


@dataclass(frozen=True)
class Indicator:
    id: str
    title: str
    kind: str  # rate | mean
    count: str  # the counting function
    params: Mapping[str, Any]
    unit: str
    numerator: str
    denominator: str
    contribution_cap: int  # units one patient may add to any cell
    strata: tuple[str, ...]  # dimensions besides "all"
    source: Mapping[str, str]
    value_cap: int = 1  # what one unit may add to the numerator (1 for rates)

    @property
    def numerator_sensitivity(self) -> int:
        """L1 sensitivity of one numerator histogram to one patient."""
        return self.contribution_cap * self.value_cap

    @property
    def denominator_sensitivity(self) -> int:
        return self.contribution_cap

    def dimensions(self) -> tuple[str, ...]:
        return (ALL, *self.strata)


@dataclass(frozen=True)
class IndicatorSet:
    version: str
    strata: Mapping[str, tuple[str, ...]]  # dimension → its values (fixed vocabulary)
    indicators: tuple[Indicator, ...]

    def get(self, indicator_id: str) -> Indicator:
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        raise IndicatorError(f"unknown indicator {indicator_id!r}; known: {', '.join(self.ids())}")

    def ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.indicators)

    def values(self, dimension: str) -> tuple[str, ...]:
        return (ALL,) if dimension == ALL else self.strata[dimension]


def _need(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise IndicatorError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _indicator(doc: Mapping[str, Any], strata: Mapping[str, tuple[str, ...]]) -> Indicator:
    where = f"indicator {doc.get('id')!r}"
    kind = _need(doc, "kind", str, where)
    if kind not in KINDS:
        raise IndicatorError(f"{where}: kind must be one of {', '.join(KINDS)}")
    count = _need(doc, "count", str, where)
    if count not in COUNTERS:
        raise IndicatorError(f"{where}: unknown counting function {count!r}")
    cap = _need(doc, "contribution_cap", int, where)
    if not 1 <= cap <= 10:
        raise IndicatorError(f"{where}: contribution_cap must be 1..10")
    value_cap = int(doc.get("value_cap", 1))
    if kind == "mean" and value_cap < 1:
        raise IndicatorError(f"{where}: a mean needs a positive value_cap")
    if kind == "rate" and value_cap != 1:
        raise IndicatorError(f"{where}: a rate's numerator counts units (value_cap 1)")
    dims = tuple(_need(doc, "strata", list, where))
    for d in dims:
        if d not in strata:
            raise IndicatorError(f"{where}: unknown stratum {d!r}")
    source = _need(doc, "source", dict, where)
    if not source.get("guideline") or not source.get("edition"):
        raise IndicatorError(f"{where}: the source must name a guideline and its edition")
    return Indicator(
        id=_need(doc, "id", str, where),
        title=_need(doc, "title", str, where),
        kind=kind,
        count=count,
        params=dict(doc.get("params") or {}),
        unit=_need(doc, "unit", str, where),
        numerator=_need(doc, "numerator", str, where),
        denominator=_need(doc, "denominator", str, where),
        contribution_cap=cap,
        strata=dims,
        source=dict(source),
        value_cap=value_cap,
    )


def load_indicators(path: Path | str = DEFAULT_FILE) -> IndicatorSet:
    """Read and check a definitions file; any fault is an :class:`IndicatorError`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndicatorError(f"{path}: {exc}") from exc
    strata = {k: tuple(v) for k, v in _need(doc, "strata", dict, str(path)).items()}
    if ALL in strata:
        raise IndicatorError(f"{path}: '{ALL}' is not a stratum name")
    indicators = tuple(_indicator(d, strata) for d in _need(doc, "indicators", list, str(path)))
    ids = [i.id for i in indicators]
    if len(set(ids)) != len(ids):
        raise IndicatorError(f"{path}: indicator ids repeat")
    return IndicatorSet(_need(doc, "version", str, str(path)), strata, indicators)


@cache
def default_indicators() -> IndicatorSet:
    return load_indicators(DEFAULT_FILE)
