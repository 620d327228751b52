"""Durations and FHIR ``Timing`` s as time arithmetic (pure).

Rules state windows as ISO 8601 durations (``P3D``, ``PT4H``); pathways state frequencies as
FHIR ``Timing.repeat`` (frequency per period + periodUnit) and goal/visit offsets as FHIR
``Duration`` (value + UCUM unit ``min|h|d|wk|mo|a``). Months and years are calendar months.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

__all__ = ["parse_duration", "add_period", "timing_interval", "timing_period", "TimingError"]

_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")
_FIXED = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 7 * 86400}


class TimingError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration of weeks, days, hours and minutes (``P3D``, ``PT4H``, ``P1DT12H``)."""
    m = _ISO.match(text or "")
    if not m or text in ("P", "PT") or not any(m.groups()):
        raise TimingError(f"not an ISO 8601 duration of weeks/days/hours/minutes: {text!r}")
    w, d, h, mi = (int(g or 0) for g in m.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=mi)


def _add_months(moment: datetime, months: int) -> datetime:
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def add_period(moment: datetime, value: float, unit: str) -> datetime:
    """``moment`` + ``value`` ``unit`` (UCUM time unit; ``mo``/``a`` are calendar months/years)."""
    if unit in _FIXED:
        return moment + timedelta(seconds=value * _FIXED[unit])
    if unit in ("mo", "a") and float(value).is_integer():
        return _add_months(moment, int(value) * (12 if unit == "a" else 1))
    raise TimingError(f"unsupported time unit {unit!r} (use s, min, h, d, wk, mo, a)")


def timing_period(timing: Mapping[str, Any]) -> tuple[float, str]:
    """(period, periodUnit) of a FHIR Timing's repeat."""
    rep = timing.get("repeat") or {}
    if "period" not in rep or "periodUnit" not in rep:
        raise TimingError("Timing.repeat needs period and periodUnit")
    return float(rep["period"]), str(rep["periodUnit"])


def timing_interval(timing: Mapping[str, Any], start: datetime) -> timedelta:
    """The length of one repeat period of ``timing`` starting at ``start``."""
    value, unit = timing_period(timing)
    return add_period(start, value, unit) - start
