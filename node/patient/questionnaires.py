"""Patient questionnaires (FHIR SDC): check an answer set, score it, extract Observations (pure).

The Questionnaires are data (``node/patient/questionnaires/*.json``): PHQ-9, the COPD
Assessment Test and an HF daily diary written for IPJMS (not KCCQ, which is licensed), in
Chinese (``text``) with English translations (the ``translation`` extension on ``_text`` /
``_display``). Each answer option carries its score as ``ordinalValue``; each total is an item
with an SDC ``calculatedExpression`` (FHIRPath, compiled strictly with the care rules' library
``node/care/expressions.py``); items marked ``observationExtract`` become Observations with the
item's code (SDC observation-based ``$extract``), so the care rules see them (PHQ-9 total
44261-6 and item 9 44260-8, the CAT total, the diary's body weight 29463-7).

:func:`complete` never trusts a client's scores: it rebuilds every answer from the
Questionnaire's own option (code, display, ordinal), drops any answer to a calculated item and
computes it. An unknown questionnaire, an unknown item, an answer that is not an option, a
missing required answer or a value of the wrong type is ``Unprocessable`` (422).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from node.care.expressions import Expression, compile_expression
from servicekit.outcome import Unprocessable

__all__ = [
    "Questionnaire",
    "load_questionnaires",
    "complete",
    "extract",
    "ORDINAL",
    "CALCULATED",
    "OBSERVATION_EXTRACT",
]

DIRECTORY = Path(__file__).parent / "questionnaires"
ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"
CALCULATED = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression"
OBSERVATION_EXTRACT = (
    "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract"
)
UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
SURVEY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
            "display": "Survey",
        }
    ]
}


def _ext(element: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in element.get("extension") or [] if e.get("url") == url), None)


@dataclass(frozen=True)
class Questionnaire:
    resource: dict[str, Any]
    items: dict[str, dict[str, Any]]
    calculated: dict[str, Expression]

    @property
    def url(self) -> str:
        return str(self.resource["url"])

    @classmethod
    def of(cls, resource: dict[str, Any]) -> Questionnaire:
        items = {str(i["linkId"]): i for i in resource.get("item") or []}
        calculated = {}
        for link, item in items.items():
            ext = _ext(item, CALCULATED)
            if ext is not None:
                calculated[link] = compile_expression(ext["valueExpression"]["expression"])
        return cls(resource, items, calculated)

    def text(self, item: Mapping[str, Any], lang: str) -> str:
        """An item's text in ``lang`` (``zh-CN`` is the text itself; others by translation)."""
        if lang.lower().startswith("zh"):
            return str(item.get("text", ""))
        for tr in (item.get("_text") or {}).get("extension") or []:
            parts = {e["url"]: e for e in tr.get("extension") or []}
            if tr.get("url") == TRANSLATION and parts.get("lang", {}).get("valueCode") == lang:
                return str(parts["content"]["valueString"])
        return str(item.get("text", ""))


@cache
def load_questionnaires(directory: Path = DIRECTORY) -> dict[str, Questionnaire]:
    """Every Questionnaire of the folder by canonical URL (a bad expression stops start-up)."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        q = Questionnaire.of(json.loads(path.read_text(encoding="utf-8")))
        out[q.url] = q
    return out


def _option(item: Mapping[str, Any], coding: Any, link: str) -> dict[str, Any]:
    if not isinstance(coding, dict):
        raise Unprocessable(f"item {link}: a choice is answered with valueCoding")
    for option in item.get("answerOption") or []:
        have = option["valueCoding"]
        if (have.get("system"), have.get("code")) == (coding.get("system"), coding.get("code")):
            return {"valueCoding": copy.deepcopy(have)}
    raise Unprocessable(f"item {link}: {coding.get('code')!r} is not one of the answer options")


def _answer(item: Mapping[str, Any], answer: Any, link: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise Unprocessable(f"item {link}: each answer is an object")
    kind = item.get("type")
    if kind == "choice":
        return _option(item, answer.get("valueCoding"), link)
    if kind == "decimal":
        value = answer.get("valueDecimal", answer.get("valueInteger"))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Unprocessable(f"item {link}: needs valueDecimal")
        return {"valueDecimal": value}
    if kind == "integer":
        value = answer.get("valueInteger")
        if isinstance(value, bool) or not isinstance(value, int):
            raise Unprocessable(f"item {link}: needs valueInteger")
        return {"valueInteger": value}
    raise Unprocessable(f"item {link}: type {kind} is not answered by patients")


def _number(result: list[Any], link: str) -> int:
    if len(result) != 1 or isinstance(result[0], bool):
        raise Unprocessable(f"item {link}: the score could not be computed")
    value = Decimal(str(result[0]))
    if value != value.to_integral_value():
        raise Unprocessable(f"item {link}: the score is not a whole number")
    return int(value)


def complete(response: Mapping[str, Any]) -> tuple[Questionnaire, dict[str, Any]]:
    """The response as stored: its questionnaire, answers rebuilt from the options, totals
    computed by their ``calculatedExpression``, status ``completed``."""
    url = str(response.get("questionnaire") or "").split("|", 1)[0]
    q = load_questionnaires().get(url)
    if q is None:
        raise Unprocessable(f"unknown questionnaire {url!r}: not one this node publishes")
    out = copy.deepcopy(dict(response))
    out["resourceType"] = "QuestionnaireResponse"  # FHIRPath resolves value[x] by the model
    out["questionnaire"] = f"{q.url}|{q.resource.get('version', '1')}"
    out["status"] = "completed"
    given: dict[str, dict[str, Any]] = {}
    for item in response.get("item") or []:
        link = str(item.get("linkId")) if isinstance(item, dict) else ""
        if link not in q.items:
            raise Unprocessable(f"item {link!r} is not in {q.url}")
        if link in given:
            raise Unprocessable(f"item {link} is answered twice")
        given[link] = item
    items = []
    for link, qitem in q.items.items():
        if link in q.calculated:
            continue
        answers = (given.get(link) or {}).get("answer") or []
        if not answers:
            if qitem.get("required"):
                raise Unprocessable(f"item {link} is required")
            continue
        if len(answers) > 1:
            raise Unprocessable(f"item {link} takes one answer")
        items.append({"linkId": link, "answer": [_answer(qitem, answers[0], link)]})
    out["item"] = items
    for link, expression in q.calculated.items():
        score = _number(
            expression.evaluate(out, {"resource": out, "questionnaire": q.resource}), link
        )
        items.append({"linkId": link, "answer": [{"valueInteger": score}]})
    return q, out


def _answers(response: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in response.get("item") or []:
        for answer in item.get("answer") or []:
            yield str(item["linkId"]), answer


def extract(
    q: Questionnaire, response: Mapping[str, Any], patient: str, response_ref: str
) -> list[dict[str, Any]]:
    """Observation-based ``$extract``: one Observation per answered item marked
    ``observationExtract``, coded with the item's code; a choice's score is ``valueInteger``
    (what the care rules read), a decimal with its unit is a UCUM ``valueQuantity``."""
    out = []
    for link, answer in _answers(response):
        item = q.items[link]
        flag = _ext(item, OBSERVATION_EXTRACT)
        if not flag or not flag.get("valueBoolean"):
            continue
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": [SURVEY],
            "code": {"coding": copy.deepcopy(item["code"])},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": response.get("authored"),
            "performer": [{"reference": f"Patient/{patient}"}],
            "derivedFrom": [{"reference": response_ref}],
        }
        if "valueCoding" in answer:
            ordinal = _ext(answer["valueCoding"], ORDINAL)
            obs["valueInteger"] = int(ordinal["valueDecimal"]) if ordinal else None
        elif "valueDecimal" in answer:
            unit = (_ext(item, UNIT) or {}).get("valueCoding") or {}
            obs["valueQuantity"] = {
                "value": answer["valueDecimal"],
                "unit": unit.get("display", unit.get("code")),
                "system": unit.get("system"),
                "code": unit.get("code"),
            }
            obs["category"] = [
                SURVEY,
                {
                    "coding": [
                        {
                            "system": SURVEY["coding"][0]["system"],
                            "code": "vital-signs",
                        }
                    ]
                },
            ]
        else:
            obs["valueInteger"] = answer["valueInteger"]
        out.append(obs)
    return out
