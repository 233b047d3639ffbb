"""Pure auth checks over raw bytes: every scheme, rotation, and malformed headers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from gateway.auth import Authenticator
from gateway.errors import Unauthorized

BODY = b'{"submissionId": "s-1"}'


def _auth(scheme: str, header: str = "authorization", *secrets: str) -> Authenticator:
    return Authenticator(scheme, header, tuple(s.encode() for s in secrets or ("s3cret",)))  # type: ignore[arg-type]


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
    Authenticator("none", "authorization", ()).check({}, b"")
