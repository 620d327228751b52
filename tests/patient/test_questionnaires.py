"""Issue 15 must-show 3 (and 4 for questionnaires): scores computed by the Questionnaires' own
FHIRPath ``calculatedExpression`` s equal hand-computed scores — PHQ-9 over answer combinations
drawn by hypothesis, in both languages; the CAT and the HF diary over a table — and the
extracted Observations carry their LOINC codes; an unknown questionnaire or an answer that is
not an option is a 422 with nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.questionnaire import Questionnaire as FhirQuestionnaire
from hypothesis import given, settings
from hypothesis import strategies as st
from patient.region_harness import Region
from patient.stored import stored

from node.patient.questionnaires import ORDINAL, complete, extract, load_questionnaires
from servicekit.outcome import Unprocessable

BASE = "https://ipjms.example.org/fhir/Questionnaire/"
PHQ = load_questionnaires()[BASE + "phq-9"]
CAT = load_questionnaires()[BASE + "copd-cat"]
HF = load_questionnaires()[BASE + "hf-daily-diary"]
# PHQ-9 answers by hand: LOINC answer code → points (Kroenke et al. 2001)
PHQ_POINTS = {"LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2, "LA6571-9": 3}


def _choice(q: Any, link: str, code: str, lang: str) -> dict[str, Any]:
    option = next(o["valueCoding"] for o in q.items[link]["answerOption"]
                  if o["valueCoding"]["code"] == code)  # fmt: skip
    display = option["display"] if lang == "zh-CN" else q.text(
        {"text": option["display"], "_text": option["_display"]}, lang)  # fmt: skip
    # what an app sends: code + the label it showed, no score (the server never trusts one)
    return {"linkId": link, "answer": [{"valueCoding": {
        "system": option["system"], "code": code, "display": display}}]}  # fmt: skip


def _score(response: dict[str, Any], link: str) -> int:
    item = next(i for i in response["item"] if i["linkId"] == link)
    return int(item["answer"][0]["valueInteger"])


def test_questionnaires_are_valid_sdc_resources_in_both_languages() -> None:
    assert len(load_questionnaires()) == 3
    for q in load_questionnaires().values():
        FhirQuestionnaire.model_validate(q.resource)  # FHIR R4B structure
        for item in q.resource["item"]:
            zh, en = q.text(item, "zh-CN"), q.text(item, "en")
            assert zh and en and zh != en, item["linkId"]
            assert any("\u4e00" <= ch <= "\u9fff" for ch in zh), item["linkId"]
        assert q.calculated, q.url


@settings(max_examples=400, deadline=None)
@given(
    answers=st.lists(st.sampled_from(sorted(PHQ_POINTS)), min_size=9, max_size=9),
    lang=st.sampled_from(["zh-CN", "en"]),
    claimed=st.integers(min_value=0, max_value=99),
)
def test_phq9_total_equals_the_hand_computed_sum(
    answers: list[str], lang: str, claimed: int
) -> None:
    items = [_choice(PHQ, f"phq9-q{i}", code, lang) for i, code in enumerate(answers, 1)]
    items.append({"linkId": "phq9-total", "answer": [{"valueInteger": claimed}]})  # ignored
    body = {"resourceType": "QuestionnaireResponse", "questionnaire": PHQ.url,
            "status": "in-progress", "item": items}  # fmt: skip
    _q, response = complete(body)
    expected = sum(PHQ_POINTS[a] for a in answers)
    assert _score(response, "phq9-total") == expected
    observations = extract(PHQ, response, "p1", "QuestionnaireResponse/x")
    by_code = {o["code"]["coding"][0]["code"]: o["valueInteger"] for o in observations}
    assert by_code == {"44261-6": expected, "44260-8": PHQ_POINTS[answers[8]]}


def test_phq9_every_answer_combination_of_two_items_with_the_rest_fixed() -> None:
    """Exhaustive where it is small: all 16 combinations of items 1 and 9 (the rest 'several
    days'), both languages."""
    for lang in ("zh-CN", "en"):
        for first in PHQ_POINTS:
            for ninth in PHQ_POINTS:
                codes = [first, *["LA6569-3"] * 7, ninth]
                items = [_choice(PHQ, f"phq9-q{i}", c, lang) for i, c in enumerate(codes, 1)]
                _q, r = complete({"questionnaire": PHQ.url, "item": items})
                assert _score(r, "phq9-total") == PHQ_POINTS[first] + 7 + PHQ_POINTS[ninth]


CAT_TABLE = [
    ([0] * 8, 0),
    ([5] * 8, 40),
    ([1, 2, 3, 4, 5, 0, 1, 2], 18),
    ([3, 3, 2, 4, 1, 0, 2, 3], 18),
]
HF_TABLE = [(("none", "none", "none", "none"), 0), (("severe",) * 4, 12),
            (("mild", "moderate", "severe", "none"), 6)]  # fmt: skip
HF_POINTS = {"none": 0, "mild": 1, "moderate": 2, "severe": 3}


@pytest.mark.parametrize(("points", "total"), CAT_TABLE)
@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_cat_total(points: list[int], total: int, lang: str) -> None:
    items = [_choice(CAT, f"cat-q{i}", f"cat-{p}", lang) for i, p in enumerate(points, 1)]
    _q, r = complete({"questionnaire": CAT.url, "item": items})
    assert _score(r, "cat-total") == total == sum(points)
    [obs] = extract(CAT, r, "p1", "QuestionnaireResponse/x")
    assert obs["code"]["coding"][0]["code"] == "copd-cat-total" and obs["valueInteger"] == total


@pytest.mark.parametrize(("levels", "total"), HF_TABLE)
@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_hf_diary_score_and_weight(levels: tuple[str, ...], total: int, lang: str) -> None:
    keys = ("breath", "night", "swelling", "fatigue")
    items = [
        _choice(HF, f"hf-s-{k}", f"hf-sev-{lv}", lang) for k, lv in zip(keys, levels, strict=True)
    ]
    items.append({"linkId": "hf-weight", "answer": [{"valueDecimal": 71.4}]})
    _q, r = complete({"questionnaire": HF.url, "item": items})
    assert _score(r, "hf-symptom-score") == total == sum(HF_POINTS[lv] for lv in levels)
    by_code = {o["code"]["coding"][0]["code"]: o for o in extract(HF, r, "p1", "x")}
    assert by_code["29463-7"]["valueQuantity"] == {"value": 71.4, "unit": "kg",
        "system": "http://unitsofmeasure.org", "code": "kg"}  # fmt: skip
    assert by_code["hf-diary-symptom-score"]["valueInteger"] == total


@pytest.mark.parametrize(
    ("response", "says"),
    [
        ({"questionnaire": BASE + "kccq"}, "unknown questionnaire"),
        (
            {
                "questionnaire": PHQ.url,
                "item": [
                    {
                        "linkId": "phq9-q1",
                        "answer": [
                            {"valueCoding": {"system": "http://loinc.org", "code": "LA0000-0"}}
                        ],
                    }
                ],
            },
            "not one of the answer options",
        ),  # fmt: skip
        ({"questionnaire": PHQ.url, "item": []}, "required"),
        ({"questionnaire": PHQ.url, "item": [{"linkId": "nope"}]}, "not in"),
    ],
)
def test_bad_answer_sets_are_refused(response: dict[str, Any], says: str) -> None:
    with pytest.raises(Unprocessable, match=says):
        complete(response)


def test_ordinal_scores_come_from_the_questionnaire(region: Region) -> None:
    """A client that sends its own ordinalValue does not change the score."""
    items = [_choice(PHQ, f"phq9-q{i}", "LA6568-5", "en") for i in range(1, 10)]
    items[0]["answer"][0]["valueCoding"]["extension"] = [{"url": ORDINAL, "valueDecimal": 27}]
    _q, r = complete({"questionnaire": PHQ.url, "item": items})
    assert _score(r, "phq9-total") == 0


def test_patient_answers_over_http_are_stored_with_extracted_observations(region: Region) -> None:
    listing = region.node.get("/patient/questionnaires?lang=en", headers=region.a.headers)
    assert listing.status_code == 200
    assert {q["id"] for q in listing.json()["questionnaires"]} == {
        "phq-9",
        "copd-cat",
        "hf-daily-diary",
    }
    codes = ["LA6571-9"] * 5 + ["LA6570-1"] * 3 + ["LA6569-3"]  # 15 + 6 + 1 = 22
    items = [_choice(PHQ, f"phq9-q{i}", c, "zh-CN") for i, c in enumerate(codes, 1)]
    body = {"resourceType": "QuestionnaireResponse", "questionnaire": PHQ.url,
            "status": "completed", "item": items,
            "author": {"reference": f"Patient/{region.b.patient_id}"}}  # fmt: skip
    r = region.node.post("/patient/questionnaire-responses", json=body, headers=region.a.headers)
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"] for e in r.json()["entry"]]
    qr = region.store.read(*locations[0].split("/")[:2])
    me = {"reference": f"Patient/{region.a.patient_id}"}
    assert qr["author"] == me and qr["subject"] == me  # set by the server
    assert _score(qr, "phq9-total") == 22
    observations = [region.store.read(*loc.split("/")[:2]) for loc in locations[1:]]
    assert {o["code"]["coding"][0]["code"]: o["valueInteger"] for o in observations} == {
        "44261-6": 22, "44260-8": 1}  # fmt: skip
    assert all(o["derivedFrom"] == [{"reference": locations[0].rsplit("/_history", 1)[0]}]
               for o in observations)  # fmt: skip


def test_unknown_questionnaire_over_http_stores_nothing(region: Region) -> None:
    before = stored(region, "QuestionnaireResponse", "Observation")
    body = {"resourceType": "QuestionnaireResponse", "questionnaire": BASE + "kccq",
            "status": "completed", "item": []}  # fmt: skip
    r = region.node.post("/patient/questionnaire-responses", json=body, headers=region.a.headers)
    assert r.status_code == 422 and "unknown questionnaire" in r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(region, "QuestionnaireResponse", "Observation") == before
