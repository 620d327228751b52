"""Home readings: what a patient's devices send, as FHIR vital-signs Observations (pure).

Six kinds (:data:`KINDS`): blood pressure (panel 85354-9 with systolic 8480-6 / diastolic
8462-4), blood glucose (41653-7 mg/dL, 15074-8 mmol/L), body weight (29463-7), heart rate
(8867-4), SpO₂ (59408-5) and body temperature (8310-5), in UCUM units, with category
``vital-signs`` (FHIR R4 Vital Signs profile). Three shapes arrive and become the *same*
Observations:

* a FHIR ``Observation`` (a patient app),
* a home gateway's transaction ``Bundle`` of ``Device`` + Observations shaped after the HL7
  Personal Health Device IG (codes LOINC or IEEE 11073 MDC, ``Observation.device`` naming the
  bundle's Device by ``fullUrl``),
* Open mHealth data points (``blood-pressure``, ``blood-glucose``, ``body-weight``,
  ``heart-rate``, ``oxygen-saturation``, ``body-temperature`` schemas; one or a list).

:func:`normalise` turns any of them into an :class:`Upload` — canonical Observations (codes
rewritten to the catalogue's LOINC coding, category and status set, MDC codes kept) and their
Devices — or raises ``Unprocessable`` naming what is wrong. Units and plausible ranges are the
care catalogue's (``node/care/pathways/measures.json``, each range with its source), checked by
``node.care.measures.problems`` before anything is stored.

A client-supplied ``identifier`` (any system + value) makes a re-send idempotent: the reading's
id is derived from patient + identifier (``node.store.idempotency.derived_id``) and it is
written with ``PUT`` — the same reading again changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from servicekit.outcome import Unprocessable

__all__ = ["KINDS", "ReadingKind", "Upload", "normalise", "LOINC", "UCUM", "MDC"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
VITAL_SIGNS = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs",
        }
    ]
}
MAX_READINGS = 500


@dataclass(frozen=True)
class ReadingKind:
    name: str
    loinc: str
    display: str
    #: UCUM unit code → the LOINC code of the reading in that unit (glucose differs by unit)
    units: Mapping[str, str]
    mdc: frozenset[str] = frozenset()
    #: (LOINC, display, MDC codes) of components (blood pressure)
    components: tuple[tuple[str, str, frozenset[str]], ...] = ()
    omh: str = ""
    omh_field: str = ""
    codes: frozenset[str] = field(default=frozenset())

    def loinc_for(self, unit: str) -> str:
        return self.units.get(unit, self.loinc)


def _kind(name: str, loinc: str, display: str, units: dict[str, str], **kw: Any) -> ReadingKind:
    return ReadingKind(name, loinc, display, units, codes=frozenset({loinc, *units.values()}), **kw)


KINDS: tuple[ReadingKind, ...] = (
    _kind(
        "blood-pressure",
        "85354-9",
        "Blood pressure panel with all children optional",
        {"mm[Hg]": "85354-9"},
        mdc=frozenset({"150020"}),
        components=(
            ("8480-6", "Systolic blood pressure", frozenset({"150021"})),
            ("8462-4", "Diastolic blood pressure", frozenset({"150022"})),
        ),
        omh="blood-pressure",
    ),
    _kind(
        "blood-glucose",
        "41653-7",
        "Glucose [Mass/volume] in Capillary blood by Glucometer",
        {"mg/dL": "41653-7", "mmol/L": "15074-8"},
        mdc=frozenset({"160184", "160196"}),
        omh="blood-glucose",
        omh_field="blood_glucose",
    ),
    _kind(
        "body-weight",
        "29463-7",
        "Body weight",
        {"kg": "29463-7", "g": "29463-7", "[lb_av]": "29463-7"},
        mdc=frozenset({"188736"}),
        omh="body-weight",
        omh_field="body_weight",
    ),
    _kind(
        "heart-rate",
        "8867-4",
        "Heart rate",
        {"/min": "8867-4"},
        mdc=frozenset({"149546", "149530"}),
        omh="heart-rate",
        omh_field="heart_rate",
    ),
    _kind(
        "oxygen-saturation",
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        {"%": "59408-5"},
        mdc=frozenset({"150456"}),
        omh="oxygen-saturation",
        omh_field="oxygen_saturation",
    ),
    _kind(
        "body-temperature",
        "8310-5",
        "Body temperature",
        {"Cel": "8310-5"},
        mdc=frozenset({"150364"}),
        omh="body-temperature",
        omh_field="body_temperature",
    ),
)
_BY_CODE = {(LOINC, c): k for k in KINDS for c in k.codes} | {
    (MDC, c): k for k in KINDS for c in k.mdc
}
_BY_OMH = {k.omh: k for k in KINDS}
# Open mHealth unit strings → UCUM (the schemas use their own unit value sets)
_OMH_UNITS = {
    "mmHg": "mm[Hg]",
    "mg/dL": "mg/dL",
    "mmol/L": "mmol/L",
    "kg": "kg",
    "g": "g",
    "lb": "[lb_av]",
    "beats/min": "/min",
    "%": "%",
    "C": "Cel",
}


@dataclass
class Upload:
    observations: list[dict[str, Any]]
    devices: dict[str, dict[str, Any]]  # fullUrl / local key → Device


def _kind_of(code: Mapping[str, Any] | None) -> ReadingKind | None:
    for coding in (code or {}).get("coding") or []:
        if isinstance(coding, dict):
            kind = _BY_CODE.get((str(coding.get("system")), str(coding.get("code"))))
            if kind is not None:
                return kind
    return None


def _coding(loinc: str, display: str, extra: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    mdc = [dict(c) for c in extra if isinstance(c, dict) and c.get("system") == MDC]
    return {"coding": [{"system": LOINC, "code": loinc, "display": display}, *mdc]}


def _quantity(q: Any, where: str) -> dict[str, Any]:
    if not isinstance(q, dict) or not isinstance(q.get("value"), (int, float)):
        raise Unprocessable(f"{where}: a reading needs valueQuantity with a number")
    if isinstance(q.get("value"), bool):
        raise Unprocessable(f"{where}: value must be a number")
    unit = q.get("code")
    if q.get("system") != UCUM or not isinstance(unit, str):
        raise Unprocessable(f"{where}: the unit must be a UCUM code (system {UCUM})")
    return {"value": q["value"], "unit": q.get("unit") or unit, "system": UCUM, "code": unit}


def canonical(obs: Mapping[str, Any], where: str = "Observation") -> dict[str, Any]:
    """One reading as the catalogue's vital-signs Observation (copy; refuses unknown kinds)."""
    if not isinstance(obs, dict) or obs.get("resourceType") != "Observation":
        raise Unprocessable(f"{where}: expected an Observation")
    kind = _kind_of(obs.get("code"))
    if kind is None:
        names = ", ".join(k.name for k in KINDS)
        raise Unprocessable(f"{where}: not a home reading this node takes ({names})")
    out = copy.deepcopy(dict(obs))
    out["status"] = "final"
    out["category"] = [VITAL_SIGNS]
    extra = (obs.get("code") or {}).get("coding") or []
    if kind.components:
        comps = {}
        for i, comp in enumerate(obs.get("component") or []):
            if not isinstance(comp, dict):
                continue
            for loinc, display, mdc in kind.components:
                codes = {
                    (c.get("system"), c.get("code"))
                    for c in comp.get("code", {}).get("coding") or []
                }
                if (LOINC, loinc) in codes or any((MDC, m) in codes for m in mdc):
                    q = _quantity(comp.get("valueQuantity"), f"{where}.component[{i}]")
                    comps[loinc] = {
                        "code": _coding(loinc, display, comp.get("code", {}).get("coding") or []),
                        "valueQuantity": q,
                    }
        missing = [d for loinc, d, _ in kind.components if loinc not in comps]
        if missing:
            raise Unprocessable(f"{where}: {kind.name} needs {', '.join(missing)}")
        out["code"] = _coding(kind.loinc, kind.display, extra)
        out["component"] = [comps[loinc] for loinc, _, _ in kind.components]
        out.pop("valueQuantity", None)
    else:
        q = _quantity(obs.get("valueQuantity"), where)
        if q["code"] not in kind.units:
            accepted = ", ".join(kind.units)
            raise Unprocessable(
                f"{where}: {q['code']!r} is not a unit of {kind.name} (accepted: {accepted})"
            )
        out["code"] = _coding(kind.loinc_for(q["code"]), kind.display, extra)
        out["valueQuantity"] = q
    if not (out.get("effectiveDateTime") or out.get("effectivePeriod")):
        raise Unprocessable(f"{where}: a reading needs effectiveDateTime (when it was measured)")
    return out


def _omh_time(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    frame = body.get("effective_time_frame") or {}
    if isinstance(frame, dict) and isinstance(frame.get("date_time"), str):
        return {"effectiveDateTime": frame["date_time"]}
    interval = frame.get("time_interval") if isinstance(frame, dict) else None
    if isinstance(interval, dict) and interval.get("start_date_time"):
        period = {"start": interval["start_date_time"]}
        if interval.get("end_date_time"):
            period["end"] = interval["end_date_time"]
        return {"effectivePeriod": period}
    raise Unprocessable(f"{where}: effective_time_frame.date_time is required")


def _omh_quantity(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("unit") not in _OMH_UNITS:
        raise Unprocessable(f"{where}: an Open mHealth unit value ({', '.join(_OMH_UNITS)})")
    ucum = _OMH_UNITS[value["unit"]]
    return {"value": value.get("value"), "unit": value["unit"], "system": UCUM, "code": ucum}


def from_open_mhealth(point: Mapping[str, Any], where: str = "data point") -> dict[str, Any]:
    """One Open mHealth data point (``header`` + ``body``, or a bare body with its schema id)
    as a FHIR Observation (before :func:`canonical`)."""
    header = point.get("header") or {}
    schema = (header.get("schema_id") or {}) if isinstance(header, dict) else {}
    body = point.get("body") if "body" in point else point
    name = schema.get("name") if isinstance(schema, dict) else None
    kind = _BY_OMH.get(str(name))
    if kind is None or not isinstance(body, dict):
        known = ", ".join(sorted(_BY_OMH))
        raise Unprocessable(f"{where}: header.schema_id.name must be one of {known}")
    obs: dict[str, Any] = {"resourceType": "Observation", **_omh_time(body, where)}
    if isinstance(header.get("uuid"), str):
        obs["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{header['uuid']}"}]
    if kind.components:
        parts = (("systolic_blood_pressure", 0), ("diastolic_blood_pressure", 1))
        obs["code"] = {"coding": [{"system": LOINC, "code": kind.loinc}]}
        obs["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": kind.components[i][0]}]},
                "valueQuantity": _omh_quantity(body.get(key), f"{where}.{key}"),
            }
            for key, i in parts
        ]
    else:
        q = _omh_quantity(body.get(kind.omh_field), f"{where}.{kind.omh_field}")
        obs["code"] = {"coding": [{"system": LOINC, "code": kind.loinc_for(q["code"])}]}
        obs["valueQuantity"] = q
    return obs


def _from_bundle(bundle: Mapping[str, Any]) -> Upload:
    if bundle.get("type") not in ("transaction", "batch", "collection"):
        raise Unprocessable("a gateway Bundle must be a transaction, batch or collection")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or len(entries) > MAX_READINGS:
        raise Unprocessable(f"a gateway Bundle holds 1..{MAX_READINGS} entries")
    devices: dict[str, dict[str, Any]] = {}
    observations: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else None
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if rtype == "Device":
            key = str(entry.get("fullUrl") or f"urn:device:{i}")
            devices[key] = res  # type: ignore[assignment]
        elif rtype == "Observation":
            observations.append(res)  # type: ignore[arg-type]
        elif rtype == "Patient":
            continue  # the gateway's copy of the patient: the signed-in patient is the subject
        else:
            raise Unprocessable(f"Bundle.entry[{i}]: a gateway sends Device and Observation only")
    return Upload(observations, devices)


def normalise(body: Any) -> Upload:
    """Whatever arrived → canonical Observations and their Devices (pure; Unprocessable when
    any part is not a home reading this node takes — then nothing is stored)."""
    if isinstance(body, list) or (isinstance(body, dict) and "resourceType" not in body):
        points = body if isinstance(body, list) else [body]
        if not points or len(points) > MAX_READINGS:
            raise Unprocessable(f"send 1..{MAX_READINGS} Open mHealth data points")
        raw = Upload(
            [from_open_mhealth(p, f"data point {i}") if isinstance(p, dict) else {}
             for i, p in enumerate(points)],
            {},
        )  # fmt: skip
    elif body.get("resourceType") == "Bundle":
        raw = _from_bundle(body)
    elif body.get("resourceType") == "Observation":
        raw = Upload([body], {})
    else:
        raise Unprocessable("send an Observation, a gateway Bundle or Open mHealth data points")
    if not raw.observations:
        raise Unprocessable("no readings in the upload")
    return Upload(
        [canonical(o, f"reading {i}") for i, o in enumerate(raw.observations)], raw.devices
    )
