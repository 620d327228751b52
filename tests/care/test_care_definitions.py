"""Pathways and rules as data: they load, validate as FHIR R4, cite their sources, and a bad
file is refused at startup with an error naming the file and the rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fhir.resources.R4B.activitydefinition import ActivityDefinition
from fhir.resources.R4B.plandefinition import PlanDefinition

from node.care.definitions import PATHWAY_DIR, RuleError, load_definitions
from node.care.rules import KINDS

from .fixtures import definitions

PATHWAYS = {"hypertension", "type-2-diabetes", "copd", "heart-failure"}


def test_four_pathways_load_with_r4_plan_and_activity_definitions():
    defs = definitions()
    assert {p.key for p in defs.pathways} == PATHWAYS
    for p in defs.pathways:
        PlanDefinition.model_validate(p.plan_definition)
        for ad in p.activity_definitions.values():
            ActivityDefinition.model_validate(ad)
        assert p.plan_definition["meta"]["profile"] == [
            "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-pathwaydefinition"
        ]
        assert p.plan_definition["goal"], p.key
        for goal in p.plan_definition["goal"]:
            assert goal["target"] and goal["documentation"]


def test_enrolment_codes_cover_icd10_and_snomed():
    codes = {p.key: {c for _, c in p.enrolment} for p in definitions().pathways}
    assert {"I10", "I11", "I12", "I13", "I15", "38341003"} <= codes["hypertension"]
    assert {"E11", "44054006"} <= codes["type-2-diabetes"]
    assert {"J44", "13645005"} <= codes["copd"]
    assert {"I50", "84114007"} <= codes["heart-failure"]


def test_every_rule_cites_guideline_and_edition_and_every_kind_is_used():
    kinds = set()
    for p in definitions().pathways:
        for r in p.rules:
            assert r.source["guideline"] and r.source["edition"], r.id
            kinds.add(r.kind)
    assert kinds == set(KINDS)


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "pathways"
    shutil.copytree(PATHWAY_DIR, target)
    return target


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_a_plan_definition_that_does_not_validate_is_refused_naming_the_file(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "copd.json", lambda b: b["entry"][0]["resource"].update(goal={"id": "x"}))
    with pytest.raises(RuleError, match=r"copd\.json: not a valid FHIR R4 Bundle at .*goal"):
        load_definitions(d)


def test_a_plan_definition_with_a_bad_required_code_is_refused(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "copd.json", lambda b: b["entry"][0]["resource"].update(status="maybe"))
    with pytest.raises(
        RuleError, match=r"copd\.json: resource 'copd': PlanDefinition.status 'maybe'"
    ):
        load_definitions(d)


def test_a_rule_with_unparseable_fhirpath_is_refused_naming_file_and_rule(tmp_path):
    d = _copy(tmp_path)

    def broken(doc):
        rule = next(r for r in doc["rules"] if r["id"] == "phq9-item9-positive")
        rule["condition"] = "Observation.value.ofType(integer) >> 0 and ("

    _edit(d / "shared.rules.json", broken)
    with pytest.raises(RuleError) as err:
        load_definitions(d)
    assert err.value.file == "shared.rules.json" and err.value.rule == "phq9-item9-positive"
    assert "not valid FHIRPath" in str(err.value)


def test_an_action_condition_with_an_unknown_function_is_refused_naming_the_action(tmp_path):
    d = _copy(tmp_path)

    def broken(doc):
        action = doc["entry"][0]["resource"]["action"][0]
        action["condition"][0]["expression"]["expression"] = "%controlStatus.isUncontrolled()"

    _edit(d / "hypertension.json", broken)
    with pytest.raises(
        RuleError, match=r"hypertension\.json: action 'home-bp-routine'.*isUncontrolled"
    ):
        load_definitions(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(kind="magic"), "kind must be one of"),
        (lambda r: r.pop("source"), "source must name the guideline"),
        (lambda r: r.update(window="three days"), "window: not an ISO 8601 duration"),
        (lambda r: r.update(measure="blood-magic"), "unknown measure"),
        (lambda r: r.pop("more_than"), "a trend rule needs"),
        (lambda r: r.update(on=["http://loinc.org"]), "'on' must be a list of 'system|code'"),
    ],
)
def test_invalid_rules_are_refused_naming_file_and_rule(tmp_path, change, message):
    d = _copy(tmp_path)
    _edit(d / "heart-failure.rules.json", lambda doc: change(doc["rules"][0]))
    with pytest.raises(RuleError, match=message) as err:
        load_definitions(d)
    assert err.value.file == "heart-failure.rules.json" and err.value.rule == "hf-weight-gain-3d"


def test_an_action_pointing_at_a_missing_activity_definition_is_refused(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "copd.json", lambda b: b["entry"].pop())  # drops an ActivityDefinition
    with pytest.raises(RuleError, match=r"copd\.json: action '.*': definitionCanonical"):
        load_definitions(d)
