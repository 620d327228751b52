"""Pseudonym inputs (issue 23): digits of any script are one identifier; a PRC resident
identity number is refused with a clear error when its GB 11643 check digit is wrong."""

from __future__ import annotations

import pytest

from node.identity import CN_RESIDENT_ID_SYSTEM, patient_pseudonym
from trust.pseudonym import (
    IdentifierError,
    check_gb11643,
    normalise_identifier,
    pseudonym,
    routing_pseudonym,
)
from trust.pseudonymiser import LinkageKeyPseudonymiser

KEY = b"k" * 32
LEGACY = LinkageKeyPseudonymiser(KEY)  # the pre-OPRF scheme, as a node without the authority
VALID_ID = "11010519491231002X"  # the standard's worked example: check character X


def test_digits_of_every_script_normalise_to_one_identifier() -> None:
    ascii_form = "123-45 6789"
    arabic_indic = "١٢٣-٤٥ ٦٧٨٩"
    fullwidth = "１２３－４５　６７８９"
    devanagari = "१२३४५६७८९"
    assert {normalise_identifier(v) for v in (ascii_form, arabic_indic, fullwidth, devanagari)} == {
        "123456789"
    }
    assert pseudonym(KEY, arabic_indic) == pseudonym(KEY, ascii_form)


def test_gb11643_check_digit() -> None:
    assert check_gb11643(VALID_ID) == "11010519491231002x"
    assert check_gb11643("110105 19491231 002x") == "11010519491231002x"
    for wrong in ("110105194912310021", "11010519491231002", "1101051949123100AX"):
        with pytest.raises(IdentifierError) as err:
            check_gb11643(wrong)
        assert wrong not in str(err.value)  # the message never quotes the number


def test_a_mistyped_resident_id_gets_no_pseudonym_and_a_clear_error() -> None:
    def patient(value: str) -> dict[str, object]:
        return {
            "resourceType": "Patient",
            "identifier": [{"system": CN_RESIDENT_ID_SYSTEM, "value": value}],
        }

    assert patient_pseudonym(patient(VALID_ID), LEGACY) == pseudonym(KEY, VALID_ID)
    typo = VALID_ID[:5] + "6" + VALID_ID[6:]
    assert patient_pseudonym(patient(typo), LEGACY) is None
    with pytest.raises(IdentifierError, match="check digit"):
        patient_pseudonym(patient(typo), LEGACY, strict=True)


def test_routing_pseudonyms_differ_per_pair_and_need_the_key() -> None:
    """One patient: the same value both ways between two organisations (a referral and the
    updates coming back), an unrelated one to another organisation, and nothing computable
    from the regional pseudonym without the linkage key (what the coordinator's locator has)."""
    regional = pseudonym(KEY, VALID_ID)
    a_b = routing_pseudonym(KEY, regional, "hosp-a", "clinic-b")
    assert a_b == routing_pseudonym(KEY, regional, "clinic-b", "hosp-a")
    others = {
        routing_pseudonym(KEY, regional, "hosp-a", "clinic-c"),
        routing_pseudonym(KEY, regional, "clinic-b", "clinic-c"),
        routing_pseudonym(b"j" * 32, regional, "hosp-a", "clinic-b"),  # another key
        routing_pseudonym(KEY, pseudonym(KEY, "11010519491231003X"), "hosp-a", "clinic-b"),
    }
    assert a_b not in others and len(others) == 4 and regional not in others | {a_b}
    assert len(a_b) == 64 and int(a_b, 16) >= 0
    with pytest.raises(ValueError):
        routing_pseudonym(KEY, regional, "hosp-a", "hosp-a")
