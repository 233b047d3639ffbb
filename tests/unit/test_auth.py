"""Auth checks over raw bytes: every scheme, rotation, malformed headers, and a declared scheme
through the real gateway (the declarations themselves are tested in test_signing)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import replace

import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.auth import Authenticator
from gateway.errors import Unauthorized
from gateway.settings import GatewaySettings, SourceSettings
from processors import signing
from tests.conftest import post, serving_app
from tests.unit.test_gateway_app import Sink

BODY = b'{"submissionId": "s-1"}'


def _auth(scheme: str, header: str = "authorization", *secrets: str) -> Authenticator:
    return Authenticator.named(scheme, header, tuple(s.encode() for s in secrets or ("s3cret",)))


@pytest.mark.parametrize(
    ("scheme", "header", "value"),
    [
        ("bearer", "authorization", "Bearer s3cret"),
        ("bearer", "authorization", "bearer   s3cret "),
        ("basic", "authorization", "Basic " + base64.b64encode(b"s3cret").decode()),
        ("header_token", "x-callback-token", "s3cret"),
        ("api_key", "x-api-key", "s3cret"),
        ("hmac_sha256", "x-signature", hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()),
        ("hmac_sha256", "x-signature", "sha256=" + hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest().upper()),
    ],
)
def test_accepts_the_right_credential(scheme: str, header: str, value: str) -> None:
    _auth(scheme, header).check({header: value}, BODY)


@pytest.mark.parametrize(
    ("scheme", "header", "value", "reason"),
    [
        ("bearer", "authorization", None, "missing authorization"),
        ("bearer", "authorization", "Bearer nope", "does not match"),
        ("bearer", "authorization", "Token s3cret", "must be 'Bearer"),
        ("bearer", "authorization", "Bearer", "must be 'Bearer"),
        ("basic", "authorization", "Basic %%%", "not valid base64"),
        ("basic", "authorization", "Basic " + base64.b64encode(b"other").decode(), "does not match"),
        ("header_token", "x-callback-token", "", "does not match"),
        ("hmac_sha256", "x-signature", "zz-not-hex", "hex HMAC"),
        (
            "hmac_sha256",
            "x-signature",
            hmac.new(b"s3cret", b"other body", hashlib.sha256).hexdigest(),
            "does not match",
        ),
    ],
)
def test_refuses_with_a_reason(scheme: str, header: str, value: str | None, reason: str) -> None:
    headers = {} if value is None else {header: value}
    with pytest.raises(Unauthorized) as refused:
        _auth(scheme, header).check(headers, BODY)
    assert reason in refused.value.detail
    assert "s3cret" not in refused.value.detail


def test_any_of_several_credentials_is_accepted_for_rotation() -> None:
    auth = _auth("header_token", "x-callback-token", "old", "new")
    auth.check({"x-callback-token": "old"}, BODY)
    auth.check({"x-callback-token": "new"}, BODY)
    with pytest.raises(Unauthorized):
        auth.check({"x-callback-token": "older"}, BODY)


def test_hmac_signs_the_exact_bytes() -> None:
    auth = _auth("hmac_sha256", "x-signature")
    signature = hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    with pytest.raises(Unauthorized):
        auth.check({"x-signature": signature}, BODY + b" ")


def test_scheme_none_accepts_anything() -> None:
    Authenticator.named("none", "authorization", ()).check({}, b"")


def test_the_clock_is_injected_for_timestamp_tolerance() -> None:
    headers = signing.sign(signing.STRIPE, BODY, b"s3cret", 1_000)
    Authenticator(signing.STRIPE, (b"s3cret",), clock=lambda: 1_000 + 300).check(headers, BODY)
    with pytest.raises(Unauthorized) as refused:
        Authenticator(signing.STRIPE, (b"s3cret",), clock=lambda: 1_000 + 301).check(headers, BODY)
    assert "tolerance" in refused.value.detail


METAMAP = (
    b'{"eventName": "verification_completed", "resource": "https://api/v2/verifications/v-9", '
    b'"identityStatus": "verified"}'
)


def test_a_source_with_a_declared_hmac_scheme_admits_a_signed_body_and_refuses_a_tampered_one() -> None:
    sources = {
        "stripe-style": SourceSettings.model_validate(
            {"provider": "metamap", "auth": {"scheme": "stripe", "credentials": ["whsec_old", "whsec_new"]}}
        ),
        "sumsub-style": SourceSettings.model_validate(
            {"provider": "metamap", "auth": {"scheme": "sumsub", "credentials": ["digest-secret"]}}
        ),
    }
    settings = GatewaySettings(sources=sources, kafka={"bootstrap_servers": "127.0.0.1:1"})
    sink = Sink()
    stripe = signing.sign(signing.STRIPE, METAMAP, b"whsec_new", time.time())
    sumsub = signing.sign(replace(signing.SUMSUB, algorithm="sha512"), METAMAP, b"digest-secret", 0)
    assert sumsub["x-payload-digest-alg"] == "HMAC_SHA512_HEX"
    with serving_app(create_app(settings, sink)) as url:
        tampered = post(f"{url}/webhooks/stripe-style", METAMAP.replace(b"verified", b"rejected"), stripe)
        assert tampered.status_code == 401
        assert tampered.json()["error"] == "unauthorized"
        assert tampered.json()["detail"] == "stripe-signature does not match any configured credential"
        stale = signing.sign(signing.STRIPE, METAMAP, b"whsec_new", time.time() - 3600)
        assert "tolerance" in post(f"{url}/webhooks/stripe-style", METAMAP, stale).json()["detail"]
        unknown = post(f"{url}/webhooks/sumsub-style", METAMAP, {**sumsub, "x-payload-digest-alg": "HMAC_MD5_HEX"})
        assert unknown.status_code == 401 and "unknown algorithm" in unknown.json()["detail"]
        assert sink.written == []

        assert post(f"{url}/webhooks/stripe-style", METAMAP, stripe).status_code == 200
        assert post(f"{url}/webhooks/sumsub-style", METAMAP, sumsub).status_code == 200
    assert [(d.source, d.body) for d in sink.written] == [("stripe-style", METAMAP), ("sumsub-style", METAMAP)]


@pytest.mark.parametrize(
    ("auth", "allow_ips", "problem"),
    [
        (
            {"scheme": "hmac_md5", "credentials": ["x"]},
            [],
            "unknown auth scheme 'hmac_md5'; known schemes: header_token",
        ),
        ({"scheme": "none"}, [], "allow_ips: a metamap source with no signature"),
        ({"scheme": "stripe"}, [], "auth scheme 'stripe' needs at least one credential"),
    ],
)
def test_a_source_auth_config_that_cannot_work_says_what_to_do(
    auth: dict[str, object], allow_ips: list[str], problem: str
) -> None:
    with pytest.raises(ValidationError) as invalid:
        SourceSettings.model_validate({"provider": "metamap", "auth": auth, "allow_ips": allow_ips})
    assert problem in str(invalid.value)


def test_none_is_an_allow_list_only_scheme() -> None:
    source = SourceSettings.model_validate(
        {"provider": "metamap", "auth": {"scheme": "none"}, "allow_ips": ["10.0.0.0/8"]}
    )
    assert source.declared_auth == signing.Unsigned() and source.auth.scheme == "none"
    configured = SourceSettings.model_validate(
        {"provider": "metamap", "auth": {"scheme": "onfido", "credentials": ["t"]}}
    )
    assert configured.declared_auth == signing.ONFIDO and configured.auth.header == "x-sha2-signature"
