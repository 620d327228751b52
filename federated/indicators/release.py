"""The node's release: its exact tally → noisy counts, small cells suppressed. Pure (the
random generator is an argument; a node passes :func:`mechanism.csprng`).

Every cell of every histogram the query names gets fresh discrete Laplace noise at the
histogram's scale. A cell is **suppressed** — neither count leaves the node — when its exact
denominator or its noisy denominator is below the minimum count (the larger of the query's and
the node's own). Suppressing on the exact count is the usual small-cell rule that data owners
require; the fact that a cell was suppressed is therefore outside the ε guarantee (it says
"exact denominator < k or the noise pushed it there"), which the published result states.
"""

from __future__ import annotations

from random import Random

from federated.indicators.counting import Tally
from federated.indicators.definitions import IndicatorSet
from federated.indicators.mechanism import sample_discrete_laplace
from federated.indicators.query import IndicatorQuery, histograms, metric_key

__all__ = ["release"]


def release(
    exact: Tally,
    query: IndicatorQuery,
    definitions: IndicatorSet,
    rng: Random,
    *,
    min_count: int | None = None,
) -> dict[str, int]:
    """Metric name → noisy count, for the cells that are released (suppressed: absent)."""
    k = max(query.min_count, min_count or 0)
    noisy: dict[tuple[str, str, str], dict[str, int]] = {}
    for hist in histograms(query, definitions):
        for value in definitions.values(hist.dimension):
            cell = exact.get(hist.indicator.id, hist.dimension, value)
            true = cell.numerator if hist.side == "num" else cell.denominator
            noisy.setdefault((hist.indicator.id, hist.dimension, value), {})[hist.side] = (
                true + sample_discrete_laplace(hist.scale, rng)
            )
    out: dict[str, int] = {}
    for (ind, dim, value), sides in noisy.items():
        if exact.get(ind, dim, value).denominator < k or sides["den"] < k:
            continue
        for side, count in sides.items():
            out[metric_key(ind, dim, value, side)] = count
    return out
