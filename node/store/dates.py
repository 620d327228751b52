"""FHIR date/dateTime/instant values as half-open UTC ranges ``[low, high)``.

A partial date is the range it covers: ``2020`` is all of 2020, ``2020-05`` all of May 2020, a
dateTime to the second covers that second. Values without a time zone are taken as UTC. Ranges are
naive UTC ``datetime`` objects so they compare the same way in SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["DateRange", "parse_date_range", "period_range", "MIN_DT", "MAX_DT", "to_instant"]

DateRange = tuple[datetime, datetime]

MIN_DT = datetime(1, 1, 1)
MAX_DT = datetime(9999, 12, 31, 23, 59, 59)

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _next_month(year: int, month: int) -> datetime:
    return datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)


def parse_date_range(value: str) -> DateRange:
    """``value`` → ``(low, high)``; ValueError if it is not a FHIR date/dateTime/instant."""
    m = _DATE_RE.match(value.strip())
    if not m:
        raise ValueError(f"not a FHIR date: {value!r}")
    year = int(m["y"])
    if m["m"] is None:
        return datetime(year, 1, 1), datetime(year + 1, 1, 1) if year < 9999 else MAX_DT
    month = int(m["m"])
    if not 1 <= month <= 12:
        raise ValueError(f"not a FHIR date: {value!r}")
    if m["d"] is None:
        return datetime(year, month, 1), _next_month(year, month)
    day_start = datetime(year, month, int(m["d"]))  # raises ValueError for 2020-02-31
    if m["H"] is None:
        return day_start, day_start + timedelta(days=1)
    frac = m["f"] or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    seconds = int(m["S"]) if m["S"] is not None else 0
    if seconds > 59:
        raise ValueError(f"not a FHIR date: {value!r}")
    start = day_start.replace(
        hour=int(m["H"]), minute=int(m["M"]), second=seconds, microsecond=micro
    )
    if m["S"] is None:
        width = timedelta(minutes=1)
    elif frac:
        width = timedelta(microseconds=1)
    else:
        width = timedelta(seconds=1)
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        start = start - sign * offset
    return start, start + width


def period_range(period: dict) -> DateRange | None:
    """A FHIR Period → range; a missing start/end is open (MIN/MAX)."""
    start, end = period.get("start"), period.get("end")
    if not isinstance(start, str) and not isinstance(end, str):
        return None
    low = parse_date_range(start)[0] if isinstance(start, str) else MIN_DT
    high = parse_date_range(end)[1] if isinstance(end, str) else MAX_DT
    return low, high


def to_instant(dt: datetime) -> str:
    """A naive UTC datetime → FHIR instant text (``meta.lastUpdated``)."""
    return dt.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
