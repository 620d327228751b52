"""An analytics run's question: which indicators, over which period and strata, at what ε per
node and with what minimum cell count — and how ε is split over the counts it releases.

The split is fixed by the query alone (both sides compute it): every (indicator, dimension)
releases two histograms, numerator and denominator, over the dimension's fixed vocabulary; the
node's ε is divided evenly over all of them (basic composition; within one histogram a patient's
units fall in cells of one partition, so a histogram costs its ε once). A count's noise scale is
its sensitivity over its share: ``b = Δ / (ε / H)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from federated.feature_spec import parse_instant
from federated.indicators.counting import Period
from federated.indicators.definitions import ALL, Indicator, IndicatorError, IndicatorSet
from federated.indicators.mechanism import as_fraction

__all__ = ["IndicatorQuery", "Histogram", "histograms", "MAX_EPSILON", "metric_key"]

MAX_EPSILON = 10.0
SIDES = ("num", "den")


def metric_key(indicator: str, dimension: str, value: str, side: str) -> str:
    """The reply's metric name of one noisy count."""
    return f"{indicator}|{dimension}|{value}|{side}"


@dataclass(frozen=True)
class Histogram:
    indicator: Indicator
    dimension: str
    side: str  # num | den
    epsilon: Fraction  # this histogram's share of the node's ε
    scale: Fraction  # discrete Laplace scale b = Δ / ε_share

    @property
    def sensitivity(self) -> int:
        ind = self.indicator
        return ind.numerator_sensitivity if self.side == "num" else ind.denominator_sensitivity


@dataclass(frozen=True)
class IndicatorQuery:
    indicators: tuple[str, ...]
    period: Period
    as_of: datetime
    epsilon: float  # per node, whole query (pure DP, δ = 0)
    strata: tuple[str, ...] = ()  # dimensions asked for besides "all" (each indicator: its own)
    min_count: int = 10
    run_label: str = ""

    def check(self, definitions: IndicatorSet) -> None:
        """Raise IndicatorError unless the query is answerable with these definitions."""
        if not self.indicators:
            raise IndicatorError("name at least one indicator")
        if len(set(self.indicators)) != len(self.indicators):
            raise IndicatorError("an indicator is named twice")
        for ind in self.indicators:
            definitions.get(ind)
        for dim in self.strata:
            if dim not in definitions.strata:
                raise IndicatorError(
                    f"unknown stratum {dim!r}; known: {', '.join(sorted(definitions.strata))}"
                )
        if not 0 < self.epsilon <= MAX_EPSILON:
            raise IndicatorError(f"ε must be in (0, {MAX_EPSILON:g}]")
        if not 1 <= self.min_count <= 1000:
            raise IndicatorError("the minimum cell count must be 1..1000")
        if self.as_of < self.period.start:
            raise IndicatorError("as-of is before the period starts")

    def dimensions(self, ind: Indicator) -> tuple[str, ...]:
        return (ALL, *(d for d in ind.strata if d in self.strata))

    def to_config(self) -> dict[str, Any]:
        """Flat values for a Flower ConfigRecord (sent to every node)."""
        return {
            "indicators": ",".join(self.indicators),
            "strata": ",".join(self.strata),
            "period-start": self.period.start.isoformat(),
            "period-end": self.period.end.isoformat(),
            "as-of": self.as_of.isoformat(),
            "epsilon": float(self.epsilon),
            "min-count": int(self.min_count),
            "run-label": self.run_label,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> IndicatorQuery:
        def instant(key: str) -> datetime:
            value = parse_instant(str(cfg.get(key, "")))
            if value is None:
                raise IndicatorError(f"'{key}' must be a date or an instant")
            return value

        try:
            period = Period(instant("period-start"), instant("period-end"))
            return cls(
                indicators=tuple(x for x in str(cfg.get("indicators", "")).split(",") if x),
                strata=tuple(x for x in str(cfg.get("strata", "")).split(",") if x),
                period=period,
                as_of=instant("as-of") if cfg.get("as-of") else datetime.now(UTC),
                epsilon=float(cfg.get("epsilon", 0.0)),
                min_count=int(cfg.get("min-count", 10)),
                run_label=str(cfg.get("run-label", "")),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, IndicatorError):
                raise
            raise IndicatorError(f"bad query: {exc}") from exc


def histograms(query: IndicatorQuery, definitions: IndicatorSet) -> list[Histogram]:
    """Every histogram the query releases, each with its ε share and noise scale."""
    shapes = [
        (definitions.get(i), dim, side)
        for i in query.indicators
        for dim in query.dimensions(definitions.get(i))
        for side in SIDES
    ]
    share = as_fraction(query.epsilon) / len(shapes)
    out = []
    for ind, dim, side in shapes:
        delta = ind.numerator_sensitivity if side == "num" else ind.denominator_sensitivity
        out.append(Histogram(ind, dim, side, share, Fraction(delta) / share))
    return out
