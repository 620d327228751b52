"""What the care rules measure, read from Observations — and the plausibility check (pure).

The catalog (``pathways/measures.json``) is data: for each measure the codes that carry it, the
UCUM units accepted (with the factor to the measure's canonical unit) and the plausible range.
:func:`readings` turns resources into :class:`Reading` s in canonical units; :func:`problems`
says why a resource must be refused (a non-UCUM unit, a value no patient can have) — the one
place that verdict is made, after OpenMRS O3's reference ranges held as data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Measure",
    "MeasureCatalog",
    "Reading",
    "parse_instant",
    "readings",
    "problems",
    "reference_of",
]

COUNTED_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True)
class Measure:
    name: str
    title: str
    codes: frozenset[tuple[str, str]]
    panels: frozenset[tuple[str, str]]
    unit: str
    units: Mapping[str, float]
    plausible: tuple[float, float]


@dataclass(frozen=True)
class MeasureCatalog:
    ucum_system: str
    measures: Mapping[str, Measure]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MeasureCatalog:
        out: dict[str, Measure] = {}
        for name, m in doc["measures"].items():
            lo, hi = m["plausible"]
            out[name] = Measure(
                name=name,
                title=m["title"],
                codes=frozenset((c["system"], c["code"]) for c in m["codes"]),
                panels=frozenset((c["system"], c["code"]) for c in m.get("panels", [])),
                unit=m["unit"],
                units=dict(m["units"]),
                plausible=(float(lo), float(hi)),
            )
        return cls(ucum_system=doc["ucum_system"], measures=out)

    def measure_for(self, codings: Iterable[tuple[str, str]]) -> Measure | None:
        keys = set(codings)
        for m in self.measures.values():
            if m.codes & keys:
                return m
        return None

    def is_panel(self, codings: Iterable[tuple[str, str]]) -> bool:
        keys = set(codings)
        return any(m.panels & keys for m in self.measures.values())


@dataclass(frozen=True, order=True)
class Reading:
    """One measured value in the measure's canonical unit, with the resource it came from."""

    time: datetime
    measure: str
    value: float
    source: str  # "Observation/123"


def reference_of(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def parse_instant(value: str | None) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime (date-only → midnight UTC); None if absent."""
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) == 10:
        text += "T00:00:00+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed


def _codings(concept: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not concept:
        return []
    return [(c.get("system", ""), c.get("code", "")) for c in concept.get("coding", [])]


def _when(obs: Mapping[str, Any]) -> datetime | None:
    return (
        parse_instant(obs.get("effectiveDateTime"))
        or parse_instant((obs.get("effectivePeriod") or {}).get("start"))
        or parse_instant(obs.get("effectiveInstant"))
        or parse_instant(obs.get("issued"))
    )


UCUM = "http://unitsofmeasure.org"


def _raw_value(element: Mapping[str, Any]) -> tuple[float | None, str | None, str | None]:
    """(value, unit system, unit code) of an Observation or component value. A Quantity with
    neither ``system`` nor ``code`` is read by its ``unit`` text, as if that were its UCUM code
    (``{"value": 70, "unit": "/min"}`` is accepted; ``"unit": "bpm"`` is not)."""
    if "valueQuantity" in element:
        q = element["valueQuantity"]
        v = q.get("value")
        value = float(v) if isinstance(v, int | float) else None
        if "system" not in q and "code" not in q:
            return value, UCUM, q.get("unit")
        return value, q.get("system"), q.get("code")
    if "valueInteger" in element:
        return float(element["valueInteger"]), None, None
    return None, None, None


def _measured(obs: Mapping[str, Any], catalog: MeasureCatalog) -> list[tuple[str, Measure, Any]]:
    """(path, measure, element) for each element of ``obs`` that carries a catalogued measure."""
    found: list[tuple[str, Measure, Any]] = []
    codings = _codings(obs.get("code"))
    m = catalog.measure_for(codings)
    if m is not None:
        found.append(("Observation.value", m, obs))
    for i, comp in enumerate(obs.get("component", []) or []):
        cm = catalog.measure_for(_codings(comp.get("code")))
        if cm is not None:
            found.append((f"Observation.component[{i}].value", cm, comp))
    return found


def _canonical(measure: Measure, element: Mapping[str, Any]) -> float | None:
    value, system, code = _raw_value(element)
    if value is None:
        return None
    if system is None and code is None and "valueInteger" in element:
        return value if measure.unit in ("{score}", "1") else None
    factor = measure.units.get(code or "")
    return None if factor is None else value * factor


def readings(resources: Iterable[Mapping[str, Any]], catalog: MeasureCatalog) -> list[Reading]:
    """Every counted reading in ``resources`` (Observations with a final/amended/corrected status
    and a time), oldest first. Values in units the catalog does not accept are skipped here —
    :func:`problems` is what refuses them at the door."""
    out: list[Reading] = []
    for res in resources:
        if res.get("resourceType") != "Observation" or res.get("status") not in COUNTED_STATUSES:
            continue
        when = _when(res)
        if when is None:
            continue
        for _path, measure, element in _measured(res, catalog):
            value = _canonical(measure, element)
            if value is not None:
                out.append(Reading(when, measure.name, value, reference_of(res)))
    return sorted(out)


def problems(resource: Mapping[str, Any], catalog: MeasureCatalog) -> list[tuple[str, str]]:
    """Why ``resource`` must be refused, as (element path, message) pairs; empty when it is fine
    or carries no catalogued measure. Checks the unit (UCUM system and an accepted code) and the
    plausible range of every measured value."""
    if resource.get("resourceType") != "Observation":
        return []
    out: list[tuple[str, str]] = []
    for path, measure, element in _measured(resource, catalog):
        value, system, code = _raw_value(element)
        if value is None:
            continue
        if "valueQuantity" in element:
            accepted = ", ".join(sorted(measure.units))
            if system != catalog.ucum_system:
                out.append(
                    (
                        f"{path}.system",
                        f"{measure.title}: unit system must be UCUM ({catalog.ucum_system}),"
                        f" got {system!r}",
                    )
                )
                continue
            if code not in measure.units:
                out.append(
                    (
                        f"{path}.code",
                        f"{measure.title}: unit {code!r} is not an accepted UCUM unit"
                        f" (accepted: {accepted})",
                    )
                )
                continue
        canonical = _canonical(measure, element)
        if canonical is None:
            out.append((path, f"{measure.title}: a score needs valueInteger or a UCUM quantity"))
            continue
        lo, hi = measure.plausible
        if not lo <= canonical <= hi:
            out.append(
                (
                    path,
                    f"{measure.title}: {value:g} is not a plausible value"
                    f" (plausible {lo:g}-{hi:g} {measure.unit})",
                )
            )
    return out


def latest(rows: Sequence[Reading], measure: str) -> Reading | None:
    matching = [r for r in rows if r.measure == measure]
    return matching[-1] if matching else None
