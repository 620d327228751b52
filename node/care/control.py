"""Control status of a patient on a pathway (controlled / uncontrolled / unknown), pure.

The pathway's rule file says when a patient counts as uncontrolled (``control.uncontrolled_when``:
the latest value, the mean over a window, or the rise over a window of a measure, compared with
a threshold). Uncontrolled when any criterion with data holds; controlled when some criterion
has data and none holds; unknown without data. The reason names each criterion and its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from node.care.measures import Reading
from node.care.rules import OPS, ControlCriterion

__all__ = ["ControlVerdict", "control_status", "UNKNOWN", "CONTROLLED", "UNCONTROLLED"]

UNKNOWN, CONTROLLED, UNCONTROLLED = "unknown", "controlled", "uncontrolled"


@dataclass(frozen=True)
class ControlVerdict:
    status: str
    reason: str


def _aggregate(c: ControlCriterion, rows: Sequence[Reading], clock: datetime) -> float | None:
    values = [r for r in rows if r.measure == c.measure and r.time <= clock]
    if c.window is not None:
        if c.aggregate == "rise" and values:
            # the window ends at the latest reading (as the trend rule's does), which must
            # itself lie within the window before the clock
            values = [r for r in values if r.time >= values[-1].time - c.window]
            if values[-1].time < clock - c.window:
                return None
        else:
            values = [r for r in values if r.time >= clock - c.window]
    if not values:
        return None
    if c.aggregate == "latest":
        return values[-1].value
    if c.aggregate == "mean":
        return sum(r.value for r in values) / len(values)
    if len(values) < 2:  # rise
        return None
    return values[-1].value - min(r.value for r in values[:-1])


def control_status(
    criteria: Sequence[ControlCriterion], rows: Sequence[Reading], clock: datetime
) -> ControlVerdict:
    """The verdict from ``rows`` (readings sorted oldest first) at ``clock``."""
    held: list[str] = []
    seen: list[str] = []
    for c in criteria:
        value = _aggregate(c, rows, clock)
        if value is None:
            continue
        text = f"{c.describe()} (measured {value:.4g})"
        seen.append(text)
        if OPS[c.op](value, c.value):
            held.append(text)
    if held:
        return ControlVerdict(UNCONTROLLED, "; ".join(held))
    if seen:
        return ControlVerdict(CONTROLLED, "none of: " + "; ".join(seen))
    return ControlVerdict(UNKNOWN, "no readings for the control criteria")
