"""The feed builder's fast paths give exactly what the standard library gives: a fullUrl is
``urn:uuid:`` + uuid5(namespace, key), and a token search value is quote()'s."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from node.feeds.transaction_bundle import _FEEDS_NAMESPACE, TransactionBuilder
from node.store.idempotency import _SAFE, token_value

SAMPLES = [
    "",
    "obs-12-8480-6",
    "https://ipjms.example/record-id",
    "urn:oid:1.2.3~x_y-z",
    "a|b",
    "a b&c=d,e+f",
    "100%",
    "Ärzt€ 日本",
    "line\nbreak",
    "?#[]@!$'()*;",
]


@pytest.mark.parametrize("key", SAMPLES)
def test_full_url_is_the_uuid5_of_the_key(key: str) -> None:
    builder = TransactionBuilder("site-x/patient-7")
    namespace = uuid.uuid5(_FEEDS_NAMESPACE, "site-x/patient-7")
    assert builder.full_url(key) == f"urn:uuid:{uuid.uuid5(namespace, key)}"


@pytest.mark.parametrize("value", SAMPLES)
def test_token_value_quotes_as_quote_does(value: str) -> None:
    expected = f"{quote('http://loinc.org', safe=_SAFE)}|{quote(value, safe=_SAFE)}"
    assert token_value("http://loinc.org", value) == expected
    assert token_value(value, "x") == f"{quote(value, safe=_SAFE)}|x"
