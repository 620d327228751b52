"""HL7 v2 → FHIR conversion (pure): valid ADT/ORU give the expected resources; each kind of bad
input gives the typed error, the right ACK code and an ERR segment naming the problem."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hl7
import pytest

from node.feeds.fhir_validation import validate_bundle
from node.feeds.hl7v2 import (
    Hl7MessageError,
    MessageInvalid,
    MessageRejected,
    build_ack,
    message_to_bundle,
)
from node.feeds.hl7v2.message import header_or_none
from node.identity import NATIONAL_ID_SYSTEM
from node_feeds.hl7_samples import (
    MSH_ORU,
    NATIONAL_ID,
    OBR,
    OBX_COMMENT,
    OBX_CREAT,
    OBX_EGFR,
    OBX_GLUCOSE,
    PID,
    adt,
    msg,
    oru,
)

NOW = datetime(2025, 3, 14, 9, 31, tzinfo=UTC)


def by_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_oru_r01_becomes_patient_observations_and_report() -> None:
    converted = message_to_bundle(oru())
    bundle = converted.bundle
    assert validate_bundle(bundle) == 6
    assert converted.header.control_id == "MSG00042"
    (patient_entry,) = by_type(bundle, "Patient")
    patient = patient_entry["resource"]
    assert patient_entry["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier={NATIONAL_ID_SYSTEM}|{NATIONAL_ID}",
    }
    assert {"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]
    ]
    assert patient["name"] == [{"family": "Novak", "given": ["Anna", "Maria"]}]
    assert (patient["birthDate"], patient["gender"]) == ("1952-04-17", "female")

    observations = [e["resource"] for e in by_type(bundle, "Observation")]
    glucose, creatinine, egfr, comment = observations
    assert glucose["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "2345-7",
        "display": "Glucose",
    }
    assert glucose["valueQuantity"] == {
        "value": 128,
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    }
    assert glucose["referenceRange"][0]["low"]["value"] == 70
    assert glucose["referenceRange"][0]["high"]["value"] == 99
    assert glucose["interpretation"][0]["coding"][0]["code"] == "H"
    assert glucose["status"] == "final"
    assert glucose["effectiveDateTime"] == "2025-03-14T08:15:00+01:00"  # OBX-14
    assert creatinine["effectiveDateTime"] == "2025-03-14T08:00:00+01:00"  # from OBR-7
    assert creatinine["valueQuantity"]["value"] == 1.42
    assert egfr["valueQuantity"]["code"] == "mL/min/{1.73_m2}"
    assert egfr["referenceRange"][0] == {
        "low": {
            "value": 60.0,
            "unit": "mL/min/{1.73_m2}",
            "system": "http://unitsofmeasure.org",
            "code": "mL/min/{1.73_m2}",
        },
        "text": ">60",
    }
    assert egfr["interpretation"][0]["coding"][0]["code"] == "L"
    assert comment["valueString"] == "Sample slightly haemolysed"
    patient_url = patient_entry["fullUrl"]
    assert all(o["subject"]["reference"] == patient_url for o in observations)

    (report_entry,) = by_type(bundle, "DiagnosticReport")
    report = report_entry["resource"]
    assert report["identifier"][0]["value"] == "FL998877"
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == "24323-8"
    assert report["issued"] == "2025-03-14T09:15:00+01:00"
    assert [r["reference"] for r in report["result"]] == [
        e["fullUrl"] for e in by_type(bundle, "Observation")
    ]
    # every entry is a conditional create on a business identifier → repeats add nothing
    for entry in bundle["entry"]:
        assert entry["request"]["ifNoneExist"].startswith("identifier=")


def test_same_message_gives_the_same_bundle() -> None:
    assert message_to_bundle(oru()).bundle == message_to_bundle(oru()).bundle


def test_corrected_result_is_a_conditional_update() -> None:
    corrected = OBX_GLUCOSE.replace("|||F|||", "|||C|||")
    bundle = message_to_bundle(oru(corrected)).bundle
    (obs,) = by_type(bundle, "Observation")
    assert obs["request"]["method"] == "PUT"
    assert obs["request"]["url"].startswith("Observation?identifier=")
    assert obs["resource"]["status"] == "corrected"


def test_coded_and_structured_numeric_values() -> None:
    coded_obx = (
        "OBX|1|CWE|600-7^Bacteria identified^LN||112283007^Escherichia coli^SCT||||||F|||20250314"
    )
    sn_obx = "OBX|2|SN|2160-0^Creatinine^LN||<^0.3|mg/dL|||||F"
    bundle = message_to_bundle(oru(coded_obx, sn_obx)).bundle
    coded, sn = (e["resource"] for e in by_type(bundle, "Observation"))
    assert coded["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "112283007",
        "display": "Escherichia coli",
    }
    assert coded["effectiveDateTime"] == "2025-03-14"
    assert sn["valueQuantity"]["comparator"] == "<"
    assert sn["valueQuantity"]["value"] == 0.3
    validate_bundle(bundle)


def test_local_code_with_loinc_alternate_puts_loinc_first() -> None:
    obx = "OBX|1|NM|GLU^Glucose^L^2345-7^Glucose SerPl^LN||99|mg/dL|||||F|||20250314"
    (obs,) = by_type(message_to_bundle(oru(obx)).bundle, "Observation")
    codings = obs["resource"]["code"]["coding"]
    assert codings[0]["system"] == "http://loinc.org" and codings[0]["code"] == "2345-7"
    assert codings[1]["code"] == "GLU"


def test_adt_admit_discharge_update() -> None:
    a01 = message_to_bundle(adt("A01")).bundle
    validate_bundle(a01)
    (patient,) = by_type(a01, "Patient")
    (encounter,) = by_type(a01, "Encounter")
    assert patient["request"]["method"] == "POST"
    enc = encounter["resource"]
    assert encounter["request"]["method"] == "PUT"
    assert encounter["request"]["url"] == (
        "Encounter?identifier=https://ipjms.example.org/fhir/sid/hl7v2/TERTIARY/VN|V5550001"
    )
    assert enc["class"]["code"] == "IMP"
    assert enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2025-03-10T07:45:00+01:00"}
    assert enc["subject"]["reference"] == patient["fullUrl"]
    assert patient["resource"]["address"][0]["city"] == "Riverton"

    a03 = message_to_bundle(adt("A03", 2)).bundle
    (enc3,) = by_type(a03, "Encounter")
    assert enc3["resource"]["status"] == "finished"
    assert enc3["resource"]["period"]["end"] == "2025-03-15T11:00:00+01:00"
    assert enc3["request"]["url"] == encounter["request"]["url"]

    a08 = message_to_bundle(adt("A08", 3)).bundle
    (p8,) = by_type(a08, "Patient")
    assert p8["request"] == {
        "method": "PUT",
        "url": f"Patient?identifier={NATIONAL_ID_SYSTEM}|{NATIONAL_ID}",
    }


def test_outpatient_visit_and_mrn_only_patient() -> None:
    pid = "PID|1||MRN1^^^CLINIC^MR||Berger^Jonas||19800101|M"
    pv1 = "PV1|1|O|||||||||||||||||VIS9^^^CLINIC^VN|||||||||||||||||||||||||202501020930"
    bundle = message_to_bundle(adt("A01", pid=pid, pv1=pv1)).bundle
    (patient,) = by_type(bundle, "Patient")
    assert patient["request"]["ifNoneExist"] == (
        "identifier=https://ipjms.example.org/fhir/sid/hl7v2/CLINIC/MR|MRN1"
    )
    (enc,) = by_type(bundle, "Encounter")
    assert enc["resource"]["class"]["code"] == "AMB"
    assert enc["resource"]["period"]["start"] == "2025-01-02T09:30:00Z"  # no offset → UTC


BAD_INPUT = [
    ("not hl7 at all", "AR", "100", "MSH^1"),
    (
        "MSH|^~\\&|LIS|LAB|IPJMS|H|20250101||ORU^R01|1|P|2.1\r" + PID,
        "AR",
        "203",
        "MSH^1^12",
    ),
    (
        "MSH|^~\\&|LIS|LAB|IPJMS|H|20250101||ORU^R01|1|D|2.5\r" + PID,
        "AR",
        "202",
        "MSH^1^11",
    ),
    ("MSH|^~\\&|LIS|LAB|IPJMS|H|20250101||SIU^S12|1|P|2.5\r" + PID, "AR", "200", "MSH^1^9"),
    ("MSH|^~\\&|LIS|LAB|IPJMS|H|20250101||ADT^A40|1|P|2.5\r" + PID, "AR", "201", "MSH^1^9^2"),
    ("MSH|^~\\&|LIS|LAB|IPJMS|H|20250101||ORU^R01||P|2.5\r" + PID, "AR", "101", "MSH^1^10"),
    (oru(pid="PID|1||||Novak^Anna"), "AE", "101", "PID^1^3"),
    (msg(MSH_ORU, OBR, OBX_GLUCOSE), "AE", "100", "PID^1"),
    (oru(OBX_GLUCOSE.replace("|128|", "|12x8|")), "AE", "102", "OBX^1^5"),
    (
        oru(OBX_CREAT, OBX_GLUCOSE.replace("20250314081500+0100", "20251341")),
        "AE",
        "102",
        "OBX^2^14",
    ),
    (oru(OBX_GLUCOSE.replace("2345-7^Glucose^LN", "")), "AE", "101", "OBX^1^3"),
    (oru(OBX_GLUCOSE.replace("|||F|||", "||||||")), "AE", "101", "OBX^1^11"),
    (oru(OBX_GLUCOSE.replace("|H|", "|ZZ|")), "AE", "103", "OBX^1^8"),
    (oru(OBX_GLUCOSE.replace("|NM|", "|ED|")), "AE", "102", "OBX^1^2"),
    (oru(obr=OBR.replace("PL123^CITYLAB|FL998877^CITYLAB", "|")), "AE", "101", "OBR^1^3"),
    (msg(MSH_ORU, PID, OBX_GLUCOSE), "AE", "100", "OBX^1"),
    (oru(pid=PID.replace("19520417", "1952-04-17")), "AE", "102", "PID^1^7"),
    (oru(pid=PID.replace("|F|", "|X|")), "AE", "103", "PID^1^8"),
    (adt("A01", pv1="PV1|1|I"), "AE", "101", "PV1^1^19"),
    (adt("A01", pv1="PV1|1|Q|||||||||||||||||V1^^^T^VN"), "AE", "103", "PV1^1^2"),
    (
        adt("A03").replace("20250315110000+0100", "20250301110000+0100"),
        "AE",
        "102",
        "PV1^1^45",
    ),
]


@pytest.mark.parametrize(("text", "ack_code", "condition", "location"), BAD_INPUT)
def test_bad_input_gives_typed_error_and_ack(
    text: str, ack_code: str, condition: str, location: str
) -> None:
    with pytest.raises(Hl7MessageError) as caught:
        message_to_bundle(text)
    error = caught.value
    assert error.ack_code == ack_code
    assert isinstance(error, MessageRejected if ack_code == "AR" else MessageInvalid)
    assert error.condition[0] == condition
    assert error.reason
    ack = build_ack(header_or_none(text), error.ack_code, error.reason, error=error, now=NOW)
    parsed = hl7.parse(ack)
    assert str(parsed.segment("MSA")[1]) == ack_code
    err = parsed.segment("ERR")
    assert str(err[2]) == location
    assert str(err[3]).split("^")[0] == condition
    assert str(err[8])  # the human-readable reason
    header = header_or_none(text)
    if header is not None:
        assert str(parsed.segment("MSA")[2]) == header.control_id


def test_ack_aa_echoes_the_message() -> None:
    converted = message_to_bundle(oru())
    ack = build_ack(converted.header, "AA", "stored 6 entries", now=NOW)
    parsed = hl7.parse(ack)
    msh = parsed.segment("MSH")
    assert str(msh[3]) == "IPJMS" and str(msh[5]) == "LIS"  # sender/receiver swapped
    assert str(msh[9]) == "ACK^R01^ACK"
    assert str(msh[12]) == "2.5.1"
    assert str(parsed.segment("MSA")[1]) == "AA"
    assert str(parsed.segment("MSA")[2]) == "MSG00042"
    assert len(list(parsed)) == 2  # no ERR on success


def test_ack_text_escapes_delimiters() -> None:
    error = MessageInvalid("bad | value ^ here & there ~ x \\ y")
    ack = build_ack(None, "AE", error.reason, error=error, now=NOW)
    parsed = hl7.parse(ack)
    assert len(parsed.segment("MSA")) == 4
    assert parsed.unescape(str(parsed.segment("MSA")[3])) == error.reason


def test_all_sample_messages_validate() -> None:
    for text in (oru(), oru(OBX_COMMENT), oru(OBX_EGFR), adt("A01"), adt("A03"), adt("A08")):
        validate_bundle(message_to_bundle(text).bundle)
