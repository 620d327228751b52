# ruff: noqa: E501  (HL7 sample segments are long by nature)
"""Sample HL7 v2 messages (segments joined with CR) used by the feed tests."""

from __future__ import annotations

NATIONAL_ID = "4410230000017"


def msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


MSH_ORU = (
    "MSH|^~\\&|LIS|CITYLAB|IPJMS|TERTIARY|20250314093000+0100||ORU^R01^ORU_R01|MSG00042|P|2.5.1"
)
MSH_ADT = (
    "MSH|^~\\&|HIS|TERTIARY|IPJMS|TERTIARY|20250310080000+0100||ADT^{event}^ADT_A01|ADT{n}|P|2.5"
)
PID = (
    f"PID|1||{NATIONAL_ID}^^^NATIONAL^NI~MRN778^^^TERTIARY^MR||Novak^Anna^Maria||19520417|F|||"
    "12 Elm Street^^Riverton^^30123^ZZ"
)
OBR = "OBR|1|PL123^CITYLAB|FL998877^CITYLAB|24323-8^Comprehensive metabolic panel^LN|||20250314080000+0100|||||||||||||||20250314091500+0100|||F"
OBX_GLUCOSE = "OBX|1|NM|2345-7^Glucose^LN||128|mg/dL^mg/dL^UCUM|70-99|H|||F|||20250314081500+0100"
OBX_CREAT = "OBX|2|NM|2160-0^Creatinine^LN||1.42|mg/dL|0.6-1.2|H|||F"
OBX_EGFR = "OBX|3|NM|33914-3^eGFR^LN||48|mL/min/{1.73_m2}|>60|L|||F"
OBX_COMMENT = "OBX|4|ST|8251-1^Service comment^LN||Sample slightly haemolysed||||||F"


def oru(*obx: str, msh: str = MSH_ORU, pid: str = PID, obr: str = OBR) -> str:
    return msg(msh, pid, obr, *(obx or (OBX_GLUCOSE, OBX_CREAT, OBX_EGFR, OBX_COMMENT)))


def adt(event: str, n: int = 1, pv1: str | None = None, pid: str = PID) -> str:
    default_pv1 = {
        "A01": "PV1|1|I|WARD3^12^1||||||||||||||||V5550001^^^TERTIARY^VN|||||||||||||||||||||||||20250310074500+0100",
        "A03": "PV1|1|I|WARD3^12^1||||||||||||||||V5550001^^^TERTIARY^VN|||||||||||||||||||||||||20250310074500+0100|20250315110000+0100",
        "A08": "PV1|1|I|WARD3^12^1||||||||||||||||V5550001^^^TERTIARY^VN|||||||||||||||||||||||||20250310074500+0100",
    }[event]
    return msg(
        MSH_ADT.format(event=event, n=n),
        f"EVN|{event}|20250310080000+0100",
        pid,
        pv1 if pv1 is not None else default_pv1,
    )
