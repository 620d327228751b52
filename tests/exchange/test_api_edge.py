"""The edge of every HTTP API of a running region (issue 13), over real processes.

Regression tests for findings 4 (unhandled exceptions → 500: deep JSON, ``_offset`` beyond 2⁶³,
too many search values) and 7 (input that should be refused was stored: ids ``..``/``.``,
control characters, whitespace-only strings, UTF-16 bodies); each failed on the code before the
shared edge (servicekit.request_limits).

Must-show 3: a CI-sized fuzz run (schemathesis + hypothesis, bounded) over every HTTP
API of a running region — a node (FHIR REST, auth, exchange, consent link), the consent registry
and the coordinator's HTTP API (status, model registry) — with the request bodies the OpenAPI now
describes (FHIR resources, consent Parameters and disclosures, model uploads, token forms), each
request authenticated as a legitimate caller of that API. Zero 5xx.

Every operation of each service's ``/openapi.json`` gets ``EXAMPLES`` generated cases; FHIR
routes' ``{rtype}`` (and the body's ``resourceType``) are drawn from the types the node stores,
so generated bodies reach FHIR validation instead of stopping at an unknown type.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from exchange_net import Region, patient_bundle, seed, start_region
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from trust.backend_auth import make_org_assertion

pytestmark = pytest.mark.slow

EXAMPLES = 12  # per operation: ~45 operations, ~550 requests, about a minute on one core
NID = "FZ-2001-0042"
FHIR_TYPES = sorted(SUPPORTED_SEARCH_PARAMS)


@pytest.fixture(scope="module")
def region(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    net = start_region(pki, tmp_path_factory.mktemp("fuzz"), nodes=(("hosp-a", "tertiary"),))
    try:
        seed(net.nodes["hosp-a"], patient_bundle(NID, name="Fuzz Target"))
        yield net
    finally:
        net.stop()


FHIR = "application/fhir+json"


def _outcome(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return str(body["issue"][0]["diagnostics"])


def _deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def _patients(region: Region) -> int:
    with sqlite3.connect(region.nodes["hosp-a"].data_dir / "node.db") as conn:
        return int(
            conn.execute(
                "select count(*) from fhir_resource_version where resource_type = 'Patient'"
            ).fetchone()[0]
        )


def test_deeply_nested_json_is_a_400_on_every_service(region: Region) -> None:
    """Was a 500 (RecursionError) on each of these, the first one without any login."""
    r = httpx.post(
        f"{region.consent_url}/enrol",
        content='{"code": "x", "password": ' + _deep_array(1000) + "}",
        headers={"Content-Type": "application/json"},
    )
    assert "nested" in _outcome(r, 400)
    node = region.nodes["hosp-a"]
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "v"}
    for _ in range(150):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "deep"},
           "extension": [extension]}  # fmt: skip
    r = httpx.post(f"{node.url}/fhir/Observation", json=obs,
                   headers={**node.headers(), "Content-Type": FHIR})  # fmt: skip
    assert "nested" in _outcome(r, 400)
    token = region.consent_client("hosp-a").access_token()
    decide = ('{"resourceType": "Parameters", "parameter": [{"name": "patient", "valueString": '
              + _deep_array(5000) + "}]}")  # fmt: skip
    r = httpx.post(f"{region.consent_url}/fhir/Consent/$decide", content=decide,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR})  # fmt: skip
    assert "nested" in _outcome(r, 400)
    url = region.coordinator.http_url
    assertion = make_org_assertion(region.pki.creds["authority"], f"{url}/models")
    r = httpx.post(f"{url}/models", content='{"card": {}, "weights": ' + _deep_array(5000) + "}",
                   headers={"Authorization": f"Bearer {assertion}",
                            "Content-Type": "application/json"})  # fmt: skip
    assert "nested" in _outcome(r, 400)


def test_search_parameters_beyond_the_limits_are_a_400(region: Region) -> None:
    """Were 500s: an integer overflow in the database driver, and SQLite's bound-variable limit."""
    node = region.nodes["hosp-a"]
    h = node.headers()

    def search(rtype: str, query: str) -> httpx.Response:
        return httpx.get(f"{node.url}/fhir/{rtype}?{query}", headers=h, timeout=60)

    assert "_offset" in _outcome(search("Patient", "_offset=99999999999999999999999"), 400)
    assert "_count" in _outcome(search("Patient", "_count=-99999999999999999999999"), 400)
    names = ",".join(f"n{i}" for i in range(2000))
    assert "values" in _outcome(search("Patient", f"name={names}"), 400)
    for param, rtype in (("name", "Patient"), ("_id", "Patient"), ("code", "Observation")):
        repeated = "&".join(f"{param}=v{i}" for i in range(1100))
        assert "parameters" in _outcome(search(rtype, repeated), 400)
    # right at the limits the search runs (100 values of one parameter, 500 in all)
    at_limit = "&".join(
        f"{p}=" + ",".join(f"v{i}" for i in range(100))
        for p in ("name", "family", "given", "_id", "identifier")
    )
    r = search("Patient", at_limit)
    assert r.status_code == 200, r.text[:300]


def _raw(url: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """A request whose path is sent exactly as given (httpx would remove ``..`` segments)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": FHIR, **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_input_that_should_be_refused_is_refused_and_not_stored(region: Region) -> None:
    """Finding 7: each of these was stored (201/200)."""
    node = region.nodes["hosp-a"]
    h = node.headers()
    before = _patients(region)
    for rid in ("..", "."):
        body = json.dumps({"resourceType": "Patient", "id": rid, "gender": "male"}).encode()
        status, answer = _raw(node.url, "PUT", f"/fhir/Patient/{rid}", body, h)
        assert status == 400 and answer["resourceType"] == "OperationOutcome", (status, answer)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "..", "gender": "male"},
         "request": {"method": "PUT", "url": "Patient/.."}}]}  # fmt: skip
    r = httpx.post(f"{node.url}/fhir", json=bundle, headers={**h, "Content-Type": FHIR})
    _outcome(r, 400)
    for family in ("a\\u0000b", "a\\u001bb", "   ", "\\t\\n"):
        raw = '{"resourceType": "Patient", "name": [{"family": "' + family + '"}]}'
        r = httpx.post(f"{node.url}/fhir/Patient", content=raw,
                       headers={**h, "Content-Type": FHIR})  # fmt: skip
        _outcome(r, 400)
    utf16 = json.dumps({"resourceType": "Patient", "gender": "male"}).encode("utf-16")
    r = httpx.post(f"{node.url}/fhir/Patient", content=utf16, headers={**h, "Content-Type": FHIR})
    assert "UTF-8" in _outcome(r, 415)
    assert _patients(region) == before
    # the consent registry's edge refuses the same (control characters, UTF-16)
    r = httpx.post(f"{region.consent_url}/enrol", content='{"code": "a\\u0000b", "password": "x"}',
                   headers={"Content-Type": "application/json"})  # fmt: skip
    _outcome(r, 400)
    r = httpx.post(f"{region.consent_url}/enrol",
                   content=json.dumps({"code": "a", "password": "b"}).encode("utf-16"),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    _outcome(r, 415)


def _case_runner(
    op: Any,
    base_url: str,
    headers_for: Callable[[Any], dict[str, str]],
    seen: dict[str, set[int]],
    deadline: float,
) -> Callable[[], None]:
    name = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=op.as_strategy(), rtype=st.sampled_from(FHIR_TYPES), same=st.booleans())
    def run(case: Any, rtype: str, same: bool) -> None:
        if time.monotonic() > deadline:
            return
        if "rtype" in (case.path_parameters or {}):
            case.path_parameters["rtype"] = rtype
            if same and isinstance(case.body, dict) and "resourceType" in case.body:
                case.body["resourceType"] = rtype
        response = case.call(base_url=base_url, headers=headers_for(case), timeout=30)
        seen.setdefault(name, set()).add(response.status_code)
        assert response.status_code < 500, (
            f"{name}: {response.status_code} {response.text[:300]}\n{case.as_curl_command()}"
        )

    return run


def _fuzz(
    base_url: str, headers_for: Callable[[Any], dict[str, str]], budget_s: float
) -> tuple[dict[str, set[int]], list[str]]:
    """Every operation of ``base_url``'s OpenAPI, EXAMPLES cases each (within ``budget_s``);
    returns the statuses seen per operation and the failures (5xx or a broken connection)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    deadline = time.monotonic() + budget_s
    for result in schema.get_all_operations():
        op = result.ok()
        try:
            _case_runner(op, base_url, headers_for, seen, deadline)()
        except AssertionError as exc:
            failures.append(str(exc)[:800])
        except Exception as exc:  # a dropped connection is a failure too
            failures.append(f"{op.method.upper()} {op.path}: {type(exc).__name__}: {exc}"[:400])
    return seen, failures


def _report(service: str, seen: dict[str, set[int]], failures: list[str]) -> None:
    print(f"\n{service}: {len(seen)} operations", {k: sorted(v) for k, v in seen.items()})
    assert not failures, f"{service} answered 5xx:\n" + "\n".join(failures)


def test_fuzz_node_api_no_5xx(region: Region) -> None:
    node = region.nodes["hosp-a"]
    doctor = node.headers()
    seen, failures = _fuzz(node.url, lambda _case: doctor, budget_s=60)
    _report("node", seen, failures)
    assert len(seen) >= 20  # every route was reached
    # the FHIR bodies reached the store's validation (not only 404s for unknown types)
    assert {400, 201} & seen["POST /fhir/{rtype}"], seen["POST /fhir/{rtype}"]


def test_fuzz_consent_registry_no_5xx(region: Region) -> None:
    org_token = region.consent_client("hosp-a").access_token()
    patient = region.patient_token(region.pseudonym(NID))
    org = {"Authorization": f"Bearer {org_token}"}

    def headers_for(case: Any) -> dict[str, str]:
        path = case.operation.path
        return (
            patient
            if path.startswith(("/fhir/Consent", "/patients/")) and "$decide" not in path
            else org
        )

    seen, failures = _fuzz(region.consent_url, headers_for, budget_s=45)
    _report("consent registry", seen, failures)
    assert {"POST /fhir/Consent/$decide", "POST /enrol", "POST /fhir/Consent"} <= set(seen)


def test_fuzz_coordinator_http_no_5xx(region: Region) -> None:
    url = region.coordinator.http_url
    authority = region.pki.creds["authority"]

    def headers_for(case: Any) -> dict[str, str]:  # assertions are single-use: one per request
        return {
            "Authorization": f"Bearer {make_org_assertion(authority, url + case.formatted_path)}"
        }

    seen, failures = _fuzz(url, headers_for, budget_s=30)
    _report("coordinator", seen, failures)
    assert "POST /models" in seen
