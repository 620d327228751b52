"""Issue 13 must-show 2: every HTTP route of the node, the consent registry, the coordinator and
the pseudonymisation authority (issue 23), driven with a token of every role and kind, answers as
the declared access table says.

The table (``access_table.toml``, data) lists for each route the token kinds allowed through;
the others must be refused — 401 when the token does not authenticate (none, expired, signed by
someone else, meant for another service), 403 when it does but may not. Allowed kinds must get
past the check (any answer but 401/403/5xx). Exhaustive, not sampled: every (route, kind) pair.
The route lists come from the apps themselves, so a route added without a table entry fails
``test_every_route_is_declared``.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from node_api.node_harness import PASSWORD, make_node

from consent.app import create_app as create_registry_app
from consent.client import ConsentClient
from consent.settings import RegistrySettings
from coordinator.directory import Directory
from coordinator.http_api import create_status_app
from coordinator.registration import record_from_credentials
from coordinator.server import build_services, open_database
from coordinator.settings import CoordinatorSettings
from node.care.records import NODE_USER_SYSTEM
from trust.backend_auth import make_org_assertion
from trust.oprf_service import PseudonymSettings
from trust.oprf_service import create_app as create_pseudonym_app
from trust.pki import init_ca, issue_org, load_org, revoke
from trust.tokens import SigningKey, TokenIssuer, load_or_create_signing_key

TABLE = tomllib.loads((Path(__file__).parent / "access_table.toml").read_text())
SERVICES = ("node", "registry", "coordinator", "pseudonym")
BASE = "http://testserver"
PSEUDO = "a1" * 32
ORG_LEVELS = {"coordinator": None, "authority": "authority", "hosp-a": "tertiary",
              "clinic-b": "community", "unregistered": None, "revoked": None}  # fmt: skip


def app_routes(app: FastAPI) -> set[str]:
    """``"METHOD /path"`` of every route the app serves (routers included, HEAD left out)."""

    def walk(routes: list[Any], prefix: str) -> Iterator[str]:
        for route in routes:
            if hasattr(route, "original_router"):  # an included router (FastAPI ≥ 0.16x)
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
                continue
            if hasattr(route, "routes") and not hasattr(route, "methods"):  # a mounted router
                yield from walk(route.routes, prefix + getattr(route, "path", ""))
                continue
            for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
                yield f"{method} {prefix}{route.path}"

    return set(walk(app.routes, ""))


# --- the three services, in process, sharing one regional PKI ----------------------------------


@dataclass
class Service:
    client: TestClient
    tokens: dict[str, Callable[[str], str | None]]  # kind → (request URL) → bearer token


def _resign(token: str, key: SigningKey, **changes: Any) -> str:
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    headers = {"kid": jwt.get_unverified_header(token).get("kid")}
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)


def _expired(claims_token: str, key: SigningKey) -> str:
    now = int(time.time())
    return _resign(claims_token, key, iat=now - 120, nbf=now - 120, exp=now - 60)


def _expired_assertion(creds: Any, audience: str) -> str:
    token = make_org_assertion(creds, audience)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 120, nbf=now - 120, exp=now - 60)
    return jwt.encode(claims, creds.signing_key, algorithm=creds.signing_algorithm, headers=header)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    root = tmp_path_factory.mktemp("access")
    init_ca(root / "ca")
    org_dirs = {org: root / "orgs" / org for org in ORG_LEVELS}
    creds = {org: issue_org(root / "ca", org, out_dir=d) for org, d in org_dirs.items()}

    # consent registry
    reg_settings = RegistrySettings(
        data_dir=root / "consent", db_url=f"sqlite:///{root / 'consent.db'}",
        ca_dir=root / "ca", public_url=BASE,
    )  # fmt: skip
    reg_app = create_registry_app(reg_settings)
    reg_http = TestClient(reg_app, base_url=BASE).__enter__()

    def org_client(org: str) -> ConsentClient:
        return ConsentClient(BASE, creds[org], transport=reg_http._transport)

    code = org_client("hosp-a").create_enrolment_code(PSEUDO)["code"]
    enrolled = reg_http.post("/enrol", json={"code": code, "password": "a long password 1"})
    login = {"username": enrolled.json()["username"], "password": "a long password 1"}
    patient_token = reg_http.post("/auth/patient-token", data=login).json()["access_token"]
    reg_key = load_or_create_signing_key(root / "consent" / "keys" / "access-token.pem")
    registry_org = org_client("hosp-a").access_token()

    # node
    node_gen = make_node(f"sqlite:///{root / 'node.db'}", root / "node")
    node = next(node_gen)
    accounts = node.app.state.auth.accounts
    accounts.add_user("patient1", PASSWORD, "patient", patient_id="pat-1")
    for user in ("doctor1", "nurse1"):  # care routes act for the user's Practitioner
        node.store.create(
            {"resourceType": "Practitioner",
             "identifier": [{"system": NODE_USER_SYSTEM, "value": user}]},
            writer="test",
        )  # fmt: skip
    client_key = SigningKey.generate("ES256")
    accounts.add_client("supernode", client_key.public_pem().decode(), "system/*.rs")

    def login_node(username: str) -> str:
        return node.login(username)["Authorization"].split()[1]

    def system_token() -> str:
        assertion = TokenIssuer("supernode", client_key).issue(
            "supernode", f"{BASE}/auth/token", ttl=60
        )
        r = node.client.post("/auth/token", data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        })  # fmt: skip
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    doctor = login_node("doctor1")
    node_key = node.app.state.auth.key
    forged = SigningKey(node_key.kid, SigningKey.generate(node_key.algorithm).private_key)
    node_tokens: dict[str, Callable[[str], str | None]] = {
        "none": lambda _url: None,
        "expired": lambda _url: _expired(doctor, node_key),
        "other_node": lambda _url: _resign(doctor, forged),
        "registry_org": lambda _url: registry_org,
        "doctor": lambda _url: doctor,
        "nurse": lambda _url: login_node("nurse1"),
        "admin": lambda _url: login_node("admin1"),
        "patient": lambda _url: login_node("patient1"),
        "system": lambda _url: system_token(),
    }
    registry_tokens: dict[str, Callable[[str], str | None]] = {
        "none": lambda _url: None,
        "expired": lambda _url: _expired(patient_token, reg_key),
        "node_doctor": lambda _url: doctor,
        "patient": lambda _url: patient_token,
        "org": lambda _url: org_client("hosp-a").access_token(),
        "org_clinician": lambda _url: org_client("hosp-a").access_token(
            acting_role="doctor", acting_user="u-1"
        ),
        "other_org": lambda _url: org_client("clinic-b").access_token(),
    }

    # coordinator HTTP app (status API + model registry), its own directory
    engine = open_database(f"sqlite:///{root / 'coordinator.db'}")
    directory = Directory(engine)
    for org, level in ORG_LEVELS.items():
        if level is not None:
            directory.register(record_from_credentials(org_dirs[org], name=org, level=level))
    coord_settings = CoordinatorSettings(
        data_dir=root / "coordinator", ca_dir=root / "ca", org_dir=org_dirs["coordinator"]
    )
    coord_creds = load_org(org_dirs["coordinator"])
    coord_app = create_status_app(
        build_services(coord_settings, engine, coord_creds), settings=coord_settings,
        creds=coord_creds,
    )  # fmt: skip
    coord_http = TestClient(coord_app, base_url=BASE).__enter__()
    coordinator_tokens: dict[str, Callable[[str], str | None]] = {
        "none": lambda _url: None,
        "expired": lambda url: _expired_assertion(creds["authority"], url),
        "node_doctor": lambda _url: doctor,
        "registry_org": lambda _url: registry_org,
        "unregistered": lambda url: make_org_assertion(creds["unregistered"], url),
        "org": lambda url: make_org_assertion(creds["hosp-a"], url),
        "authority": lambda url: make_org_assertion(creds["authority"], url),
    }
    # the pseudonymisation authority: the region's nodes (hosp-a, clinic-b) are its clients;
    # "revoked" was a client until the CA revoked it
    pseudonym_app = create_pseudonym_app(PseudonymSettings(
        data_dir=root / "pseudonym", ca_dir=root / "ca", public_url=BASE,
        clients=["hosp-a", "clinic-b", "revoked"],
    ))  # fmt: skip
    pseudonym_http = TestClient(pseudonym_app, base_url=BASE).__enter__()
    revoke(root / "ca", "revoked")
    pseudonym_tokens: dict[str, Callable[[str], str | None]] = {
        "none": lambda _url: None,
        "expired": lambda url: _expired_assertion(creds["hosp-a"], url),
        "node_doctor": lambda _url: doctor,
        "registry_org": lambda _url: registry_org,
        "revoked": lambda url: make_org_assertion(creds["revoked"], url),
        "other_audience": lambda _url: make_org_assertion(creds["hosp-a"], f"{BASE}/status"),
        "coordinator": lambda url: make_org_assertion(creds["coordinator"], url),
        "authority": lambda url: make_org_assertion(creds["authority"], url),
        "unregistered": lambda url: make_org_assertion(creds["unregistered"], url),
        "node": lambda url: make_org_assertion(creds["hosp-a"], url),
        "other_node": lambda url: make_org_assertion(creds["clinic-b"], url),
    }
    try:
        yield {
            "node": Service(node.client, node_tokens),
            "registry": Service(reg_http, registry_tokens),
            "coordinator": Service(coord_http, coordinator_tokens),
            "pseudonym": Service(pseudonym_http, pseudonym_tokens),
        }
    finally:
        pseudonym_http.__exit__(None, None, None)
        pseudonym_app.state.ledger.engine.dispose()
        coord_http.__exit__(None, None, None)
        engine.dispose()
        reg_http.__exit__(None, None, None)
        reg_app.state.engine.dispose()
        node_gen.close()


# --- the checks --------------------------------------------------------------------------------


def _entries(service: str) -> list[dict[str, Any]]:
    return list(TABLE[service]["route"])


def test_table_is_well_formed() -> None:
    for service in SERVICES:
        kinds = TABLE[service]["kinds"]
        assert set(kinds["unauthenticated"]) <= set(kinds["all"])
        routes = [e["route"] for e in _entries(service)]
        assert len(routes) == len(set(routes)), f"{service}: a route is declared twice"
        for entry in _entries(service):
            allow = entry["allow"]
            assert allow == ["*"] or set(allow) <= set(kinds["all"]) - set(
                kinds["unauthenticated"]
            ), (service, entry["route"])
            json.loads(entry.get("body", "{}"))


def test_every_route_is_declared(region: dict[str, Service]) -> None:
    """The table and the apps' own route lists name the same routes (both ways)."""
    for service in SERVICES:
        served = app_routes(region[service].client.app)  # type: ignore[arg-type]
        declared = {e["route"] for e in _entries(service)}
        assert not served - declared, f"{service}: routes without an access-table entry"
        assert not declared - served, f"{service}: table entries for routes the app lacks"


CASES = [(service, entry["route"]) for service in SERVICES for entry in _entries(service)]


@pytest.mark.parametrize(("service", "route"), CASES, ids=[f"{s}:{r}" for s, r in CASES])
def test_route_answers_every_kind_of_token_as_declared(
    region: dict[str, Service], service: str, route: str
) -> None:
    entry = next(e for e in _entries(service) if e["route"] == route)
    kinds = TABLE[service]["kinds"]
    method, template = route.split(" ", 1)
    path = template.format(**kinds.get("params", {}))
    body = entry.get("body", "{}").encode()
    svc = region[service]
    wrong = []
    if entry.get("pages"):  # a page: no bearer token opens it (sessions: tests/web)
        for kind in kinds["all"]:
            token = svc.tokens[kind](BASE + path)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = svc.client.request(method, path, headers=headers, follow_redirects=False)
            signed_out = r.status_code == 303 and r.headers["location"].endswith("/sign-in")
            if not (signed_out if method == "GET" else r.status_code == 403):
                wrong.append((kind, r.status_code, r.text[:200]))
        assert not wrong, f"{route}: " + "; ".join(map(str, wrong))
        return
    for kind in kinds["all"]:
        if entry.get("streams") and kind in entry["allow"]:
            continue  # an endless event stream: only its refusals are driven
        token = svc.tokens[kind](BASE + path)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        r = svc.client.request(method, path, content=body, headers=headers)
        if r.status_code >= 500 and r.status_code != 503:
            wrong.append((kind, r.status_code, "server error", r.text[:200]))
        elif entry["allow"] == ["*"] or kind in entry["allow"]:
            if r.status_code in (401, 403):
                wrong.append((kind, r.status_code, "allowed kind refused", r.text[:200]))
        else:
            expected = 401 if kind in kinds["unauthenticated"] else 403
            if r.status_code != expected:
                wrong.append((kind, r.status_code, f"expected {expected}", r.text[:200]))
    assert not wrong, f"{route}: " + "; ".join(map(str, wrong))
