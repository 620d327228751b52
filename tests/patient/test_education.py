"""Issue 15 (education): the items of the pathways the patient's active CarePlans instantiate,
in Chinese and English, marked read by the patient; nothing for another patient."""

from __future__ import annotations

from patient.region_harness import Region

from node.patient.education import assigned, catalogue

HF = "https://ipjms.example.org/fhir/PlanDefinition/heart-failure"


def test_every_pathway_has_four_topics_in_both_languages() -> None:
    assert len(catalogue()) == 4
    for items in catalogue().values():
        assert {i["topic"] for i in items} == {"diet", "exercise", "medication", "warning-signs"}
        for item in items:
            for field in ("title", "body"):
                assert item[field]["zh-CN"] and item[field]["en"]
                assert item[field]["zh-CN"] != item[field]["en"]
            assert item["source"]
    plan = {"instantiatesCanonical": [f"{HF}|1"]}
    assert [i["id"] for i in assigned([plan], {}, "en")] == [i["id"] for i in catalogue()[HF]]
    assert assigned([{"instantiatesCanonical": ["https://example.org/other"]}], {}, "en") == []


def test_the_plan_assigns_items_and_the_patient_marks_them_read(region: Region) -> None:
    a = region.a
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "instantiatesCanonical": [HF],
        "subject": {"reference": f"Patient/{a.patient_id}"},
    }
    region.store.create(plan, writer="test")
    zh = region.node.get("/patient/education", headers=a.headers).json()["items"]
    en = region.node.get("/patient/education?lang=en", headers=a.headers).json()["items"]
    hf_items = [i for i in en if i["pathway"] == HF]
    assert {i["id"] for i in hf_items} == {"hf-diet", "hf-exercise", "hf-medication", "hf-warning"}
    assert [i["id"] for i in zh] == [i["id"] for i in en] and zh[0]["title"] != en[0]["title"]
    assert all(i["read_at"] is None for i in hf_items if i["id"] == "hf-warning")
    r = region.node.post("/patient/education/hf-warning/$read", headers=a.headers)
    assert r.status_code == 200
    again = region.node.get("/patient/education?lang=en", headers=a.headers).json()["items"]
    first = next(i for i in again if i["id"] == "hf-warning")["read_at"]
    assert first is not None
    region.node.post("/patient/education/hf-warning/$read", headers=a.headers)
    later = region.node.get("/patient/education?lang=en", headers=a.headers).json()["items"]
    assert next(i for i in later if i["id"] == "hf-warning")["read_at"] == first
    # the doctor sees what the patient read; another patient cannot look
    seen = region.node.get(f"/patient/education?patient={a.patient_id}", headers=region.doctor)
    assert next(i for i in seen.json()["items"] if i["id"] == "hf-warning")["read_at"] == first
    r = region.node.get(f"/patient/education?patient={a.patient_id}", headers=region.b.headers)
    assert r.status_code == 403
    assert region.node.post("/patient/education/nope/$read", headers=a.headers).status_code == 404
