"""Organisation assertions (must-show 2 for backend auth): every forgery is refused."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trust.backend_auth import make_org_assertion, verify_org_assertion
from trust.pki import OrgCredentials, init_ca, issue_org, reissue_crl, revocation_list, revoke
from trust.tokens import ReplayCache, TokenError

AUD = "https://coordinator.example/status"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OrgCredentials]:
    ca = tmp_path_factory.mktemp("ba") / "ca"
    init_ca(ca, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=90))
    reissue_crl(ca)  # the CA's schedule keeps the CRL current
    return ca, issue_org(ca, "hosp-a")


def _verify(token: str, creds: OrgCredentials, **kw: Any) -> str:
    args: dict[str, Any] = {
        "ca_cert_pem": creds.ca_cert_pem,
        "audience": AUD,
        "replay_cache": ReplayCache(),
    }
    args.update(kw)
    return verify_org_assertion(token, **args)


def _claims(org: str = "hosp-a", **kw: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": org, "sub": org, "aud": AUD, "iat": now, "exp": now + 60}
    claims["jti"] = uuid.uuid4().hex
    claims.update(kw)
    return claims


def _x5c(creds: OrgCredentials, pem: bytes | None = None) -> dict[str, Any]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem or creds.signing_cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"kid": "k", "x5c": [base64.b64encode(der).decode()]}


def test_round_trip(pki: tuple[Path, OrgCredentials]) -> None:
    _ca, creds = pki
    token = make_org_assertion(creds, AUD)
    assert jwt.get_unverified_header(token)["alg"] == "ES384"
    assert _verify(token, creds) == "hosp-a"


def test_replayed_jti_refused(pki: tuple[Path, OrgCredentials]) -> None:
    _ca, creds = pki
    cache = ReplayCache()
    token = make_org_assertion(creds, AUD)
    assert _verify(token, creds, replay_cache=cache) == "hosp-a"
    with pytest.raises(TokenError, match="replayed"):
        _verify(token, creds, replay_cache=cache)


def test_forged_signature_refused(pki: tuple[Path, OrgCredentials]) -> None:
    _ca, creds = pki
    intruder = ec.generate_private_key(ec.SECP384R1())
    forged = jwt.encode(_claims(), intruder, algorithm="ES384", headers=_x5c(creds))
    with pytest.raises(TokenError, match="signature"):
        _verify(forged, creds)
    head, body, sig = make_org_assertion(creds, AUD).split(".")
    other_body = jwt.utils.base64url_encode(jwt.utils.force_bytes('{"iss":"clinic-z"}')).decode()
    with pytest.raises(TokenError):
        _verify(f"{head}.{other_body}.{sig}", creds)


def test_alg_none_and_hmac_confusion_refused(pki: tuple[Path, OrgCredentials]) -> None:
    _ca, creds = pki
    none_token = jwt.encode(_claims(), key=None, algorithm="none", headers=_x5c(creds))
    with pytest.raises(TokenError, match="algorithm"):
        _verify(none_token, creds)
    secret = creds.signing_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # pyjwt refuses to build this confusion token, so build it by hand
    b64 = jwt.utils.base64url_encode
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **_x5c(creds)}).encode()).decode()
    body = b64(json.dumps(_claims()).encode()).decode()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    hs = f"{head}.{body}.{b64(mac).decode()}"
    with pytest.raises(TokenError, match="algorithm"):
        _verify(hs, creds)


def test_wrong_audience_issuer_subject_expiry_lifetime(pki: tuple[Path, OrgCredentials]) -> None:
    _ca, creds = pki
    key, hdr = creds.signing_key, _x5c(creds)

    def signed(**kw: Any) -> str:
        return jwt.encode(_claims(**kw), key, algorithm="ES384", headers=hdr)

    assert _verify(signed(), creds) == "hosp-a"
    with pytest.raises(TokenError, match="audience"):
        _verify(make_org_assertion(creds, "https://elsewhere"), creds)
    with pytest.raises(TokenError, match="issuer"):
        _verify(signed(iss="clinic-b"), creds)  # claims another org than its certificate
    with pytest.raises(TokenError, match="subject"):
        _verify(signed(sub="clinic-b"), creds)
    with pytest.raises(TokenError, match="expired"):
        _verify(signed(iat=1000, exp=1060), creds)
    with pytest.raises(TokenError, match="lifetime"):
        _verify(signed(exp=int(time.time()) + 3000), creds)
    with pytest.raises(ValueError):
        make_org_assertion(creds, AUD, ttl=301)


def test_certificate_foreign_expired_revoked_or_wrong_usage(
    pki: tuple[Path, OrgCredentials], tmp_path: Path
) -> None:
    ca, creds = pki
    init_ca(tmp_path / "evil")
    evil = issue_org(tmp_path / "evil", "hosp-a")
    with pytest.raises(TokenError, match="regional CA"):
        _verify(make_org_assertion(evil, AUD), creds)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    old = issue_org(ca, "clinic-old", days=10, now=past, out_dir=tmp_path / "old")
    with pytest.raises(TokenError, match="expired"):
        _verify(make_org_assertion(old, AUD), creds)
    tls_x5c = _x5c(creds, creds.tls_cert_pem)
    wrong = jwt.encode(_claims(), creds.signing_key, algorithm="ES384", headers=tls_x5c)
    with pytest.raises(TokenError, match="usage"):
        _verify(wrong, creds)
    gone = issue_org(ca, "clinic-gone", out_dir=tmp_path / "gone")
    assert _verify(make_org_assertion(gone, AUD), creds, revoked=revocation_list(ca))
    revoke(ca, "clinic-gone")
    with pytest.raises(TokenError, match="revoked"):
        _verify(make_org_assertion(gone, AUD), creds, revoked=revocation_list(ca))
    no_x5c = jwt.encode(_claims(), creds.signing_key, algorithm="ES384")
    with pytest.raises(TokenError, match="x5c"):
        _verify(no_x5c, creds)
