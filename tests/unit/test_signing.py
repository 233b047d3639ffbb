"""Declared signing schemes against published vectors, rotation, tolerance and malformed headers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import signing
from processors.model import AuthSpec
from processors.signing import Hmac, Pairs, SignatureRefused

NOW = 1_700_000_000.0

# Onfido's official Python SDK (github.com/onfido/onfido-python, tests/
# test_classic_webhook_event_verification.py and test_studio_webhook_event_verification.py): the raw
# bodies, webhook tokens and X-SHA2-Signature values its WebhookEventVerifier is tested with.
ONFIDO_CLASSIC = (
    b'{"payload":{"resource_type":"check","action":"check.completed",'
    b'"object":{"id":"f2302f45-227d-413d-ad61-09ec077a086a","status":"complete",'
    b'"completed_at_iso8601":"2024-04-04T09:21:21Z",'
    b'"href":"https://api.onfido.com/v3.6/checks/f2302f45-227d-413d-ad61-09ec077a086a"}}}',
    b"wU99mE6jJ7nXOLFwZ0tJymM1lpI15pZh",
    "77ebc3e418f26be6eebb47f7ebe551321de26734fc273961e075fc9ab163d9c7",
)
ONFIDO_STUDIO = (
    b'{"payload":{"resource_type":"workflow_task","action":"workflow_task.started",'
    b'"object":{"id":"profile_1eb92","task_spec_id":"profile_1eb92",'
    b'"task_def_id":"profile_data","workflow_run_id":"bc77c6e5-753a-4580-96a6-aaed3e5a8d19"'
    b',"status":"started","started_at_iso8601":"2024-07-10T12:49:09Z",'
    b'"href":"https://api.eu.onfido.com/v3.6/workflow_runs/'
    b'bc77c6e5-753a-4580-96a6-aaed3e5a8d19/tasks/profile_1eb92"},'
    b'"resource":{"created_at":"2024-07-10T12:49:09Z","id":"profile_1eb92",'
    b'"workflow_run_id":"bc77c6e5-753a-4580-96a6-aaed3e5a8d19","updated_at":"2024-07-10T12:49:09Z"'
    b',"input":{},"task_def_version":null,"task_def_id":"profile_data","output":null}}}',
    b"YKOC6mkBxi6yK2zlUIrLMvsJMFEZObP5",
    "c95a5b785484f6fa1bc25f381b5595d66bf85cb442eefb06aa007802ee6a4dfa",
)
BODY = b'{"id":"evt_1","type":"identity.verification_session.verified"}'
SECRET = b"whsec_current"


def _hex(secret: bytes, message: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).hexdigest()


def _refused(scheme: signing.Scheme, headers: dict[str, str], body: bytes = BODY, *secrets: bytes) -> str:
    with pytest.raises(SignatureRefused) as refused:
        signing.verify(scheme, headers, body, secrets or (SECRET,), NOW)
    for secret in secrets or (SECRET,):
        assert secret.decode() not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize("vector", [ONFIDO_CLASSIC, ONFIDO_STUDIO], ids=["check.completed", "workflow_task"])
def test_onfido_sdk_vectors_pass_and_their_one_digit_changes_do_not(vector: tuple[bytes, bytes, str]) -> None:
    body, token, signature = vector
    signing.verify(signing.ONFIDO, {"x-sha2-signature": signature}, body, (token,), NOW)
    signing.verify(signing.ONFIDO, {"x-sha2-signature": signature.upper()}, body, (b"older-token", token), NOW)
    wrong = signature[:-1] + ("8" if signature[-1] != "8" else "9")
    assert "does not match" in _refused(signing.ONFIDO, {"x-sha2-signature": wrong}, body, token)
    assert "does not match" in _refused(signing.ONFIDO, {"x-sha2-signature": signature}, body + b" ", token)
    assert "missing x-sha2-signature" in _refused(signing.ONFIDO, {}, body, token)


def test_veriff_is_the_hex_hmac_of_the_body_in_its_own_header() -> None:
    signing.verify(signing.VERIFF, {"x-hmac-signature": _hex(SECRET, BODY)}, BODY, (SECRET,), NOW)
    assert "does not match" in _refused(signing.VERIFF, {"x-hmac-signature": _hex(b"wrong", BODY)})


def _stripe(t: float, *secrets: bytes, body: bytes = BODY) -> str:
    return f"t={int(t)}," + ",".join(f"v1={_hex(s, f'{int(t)}.'.encode() + body)}" for s in secrets)


def test_stripe_pairs_with_two_signatures_pass_when_either_matches() -> None:
    # During a rotation Stripe signs with both secrets; the source may know only one of them.
    header = {"stripe-signature": _stripe(NOW - 10, b"whsec_old", SECRET)}
    signing.verify(signing.STRIPE, header, BODY, (SECRET,), NOW)
    signing.verify(signing.STRIPE, header, BODY, (b"whsec_old",), NOW)
    with_v0 = {"stripe-signature": _stripe(NOW, SECRET) + ",v0=" + "00" * 32}  # other schemes are ignored
    signing.verify(signing.STRIPE, with_v0, BODY, (SECRET,), NOW)


def test_an_unreadable_signature_beside_a_valid_one_is_skipped_as_stripes_verifier_does() -> None:
    """stripe-python's test header carries `v1=bad_signature` beside the real one: it verifies."""
    header = {"stripe-signature": _stripe(NOW, SECRET) + ",v1=bad_signature"}
    signing.verify(signing.STRIPE, header, BODY, (SECRET,), NOW)
    only_bad = {"stripe-signature": f"t={int(NOW)},v1=bad_signature,v1=zz"}
    assert "must be the hex HMAC" in _refused(signing.STRIPE, only_bad)


def test_stripe_refuses_a_stale_or_future_timestamp_with_the_reason() -> None:
    stale = _refused(signing.STRIPE, {"stripe-signature": _stripe(NOW - 301, SECRET)})
    assert "301 s from now" in stale and "300 s tolerance" in stale
    assert "tolerance" in _refused(signing.STRIPE, {"stripe-signature": _stripe(NOW + 400, SECRET)})
    signing.verify(signing.STRIPE, {"stripe-signature": _stripe(NOW - 300, SECRET)}, BODY, (SECRET,), NOW)


def test_stripe_signs_the_timestamp_too() -> None:
    # A valid signature moved to another timestamp is refused: the t is part of the signed bytes.
    forged = _stripe(NOW, SECRET).replace(f"t={int(NOW)}", f"t={int(NOW) - 1}")
    assert "does not match" in _refused(signing.STRIPE, {"stripe-signature": forged})
    tampered = {"stripe-signature": _stripe(NOW, SECRET)}
    assert "does not match" in _refused(signing.STRIPE, tampered, BODY.replace(b"verified", b"canceled"))
    assert "does not match" in _refused(signing.STRIPE, {"stripe-signature": _stripe(NOW, b"whsec_wrong")})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v1=" + "ab" * 32, "no t= timestamp"),
        (f"t={int(NOW)}", "no v1= signature"),
        (f"t={int(NOW)},v0=" + "ab" * 32, "no v1= signature"),
        ("t=soon,v1=" + "ab" * 32, "whole seconds"),
        ("t=-5,v1=" + "ab" * 32, "whole seconds"),
        ("t=١٢,v1=" + "ab" * 32, "whole seconds"),  # Unicode digits are not a timestamp
        (f"t={int(NOW)},v1=zz", "must be the hex HMAC"),
        (f"t={int(NOW)},v1=abc", "must be the hex HMAC"),
        (f"t={int(NOW)},garbage", "must be t=…,v1=… pairs"),
        ("", "no t= timestamp"),
    ],
)
def test_a_malformed_pairs_header_is_refused_with_a_reason(value: str, reason: str) -> None:
    assert reason in _refused(signing.STRIPE, {"stripe-signature": value})


def test_persona_rotation_sends_two_space_separated_sets_of_pairs() -> None:
    # docs.withpersona.com, Webhook best practices: "the Persona-Signature header will contain two
    # space-separated sets of the key-value pairs" while a secret rotates.
    t = int(NOW)
    new, old = (f"t={t},v1={_hex(s, f'{t}.'.encode() + BODY)}" for s in (SECRET, b"wbhsec_old"))
    for secrets in ((SECRET,), (b"wbhsec_old",)):
        signing.verify(signing.PERSONA, {"persona-signature": f"{new} {old}"}, BODY, secrets, NOW)
    signing.verify(signing.PERSONA, {"persona-signature": new.replace(",", ", ")}, BODY, (SECRET,), NOW)
    assert "does not match" in _refused(signing.PERSONA, {"persona-signature": f"{old}"})


def test_each_signature_goes_with_the_timestamp_before_it() -> None:
    t = int(NOW)
    good = _hex(SECRET, f"{t}.".encode() + BODY)
    # The signature of t, presented under another (fresh) timestamp, does not pass.
    assert "does not match" in _refused(signing.PERSONA, {"persona-signature": f"t={t - 5},v1=00 t={t - 1},v1={good}"})
    signing.verify(signing.PERSONA, {"persona-signature": f"t={t - 1},v1=00 t={t},v1={good}"}, BODY, (SECRET,), NOW)


@pytest.mark.parametrize(
    ("name", "algorithm"), [("HMAC_SHA1_HEX", "sha1"), ("HMAC_SHA256_HEX", "sha256"), ("HMAC_SHA512_HEX", "sha512")]
)
def test_sumsub_names_the_algorithm_in_a_second_header(name: str, algorithm: str) -> None:
    headers = {"x-payload-digest": _hex(SECRET, BODY, algorithm), "x-payload-digest-alg": name}
    signing.verify(signing.SUMSUB, headers, BODY, (b"rotated-out", SECRET), NOW)
    assert "does not match" in _refused(signing.SUMSUB, headers, BODY + b"\n")
    other = "HMAC_SHA256_HEX" if name != "HMAC_SHA256_HEX" else "HMAC_SHA512_HEX"
    assert "does not match" in _refused(signing.SUMSUB, {**headers, "x-payload-digest-alg": other})


def test_sumsub_refuses_an_unknown_or_missing_algorithm_name() -> None:
    digest = {"x-payload-digest": _hex(SECRET, BODY)}
    unknown = _refused(signing.SUMSUB, {**digest, "x-payload-digest-alg": "HMAC_MD5_HEX"})
    assert "unknown algorithm 'HMAC_MD5_HEX'" in unknown and "HMAC_SHA512_HEX" in unknown
    assert "missing x-payload-digest-alg" in _refused(signing.SUMSUB, digest)


def test_every_configured_secret_is_tried() -> None:
    header = {"x-sha2-signature": _hex(b"second", BODY)}
    signing.verify(signing.ONFIDO, header, BODY, (b"first", b"second", b"third"), NOW)
    assert "does not match" in _refused(signing.ONFIDO, header, BODY, b"first", b"third")


def test_base64_prefix_and_timestamp_header_compose() -> None:
    scheme = Hmac(
        header="x-sig",
        algorithm="sha512",
        encoding="base64",
        prefix="sha512=",
        signed="{t}:{body}:v2",
        timestamp_header="x-ts",
        tolerance_s=60,
    )
    t = str(int(NOW))
    digest = hmac.new(SECRET, f"{t}:".encode() + BODY + b":v2", hashlib.sha512).digest()
    presented = base64.b64encode(digest).decode()
    signing.verify(scheme, {"x-sig": presented, "x-ts": t}, BODY, (SECRET,), NOW)
    signing.verify(scheme, {"x-sig": "sha512=" + presented, "x-ts": t}, BODY, (SECRET,), NOW)
    assert "missing x-ts" in _refused(scheme, {"x-sig": presented})
    assert "tolerance" in _refused(scheme, {"x-sig": presented, "x-ts": str(int(NOW) - 61)})
    assert "base64 HMAC" in _refused(scheme, {"x-sig": "not base64!", "x-ts": t})


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"signed": "{t}.{raw}"}, "takes {body} once"),
        ({"signed": "{t}.{body}{body}"}, "takes {body} once"),
        ({"signed": "{t}.{body}"}, "neither format"),
        ({"tolerance_s": 300}, "neither format"),
        ({"algorithm_header": "x-alg"}, "declared together"),
        ({"algorithm_header": "x-alg", "algorithms": (("SHA1", "sha1"),)}, "must be one of algorithms"),
    ],
)
def test_a_declaration_that_cannot_work_fails_where_it_is_written(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError) as failed:
        Hmac(header="x-sig", **kwargs)  # type: ignore[arg-type]
    assert problem in str(failed.value)


@pytest.mark.parametrize("name", sorted(signing.SCHEMES))
def test_every_named_scheme_accepts_what_sign_sends_and_refuses_a_tampered_body(name: str) -> None:
    scheme = signing.SCHEMES[name]
    secret = b"user:password" if isinstance(scheme, signing.Basic) else SECRET
    headers = signing.sign(scheme, BODY, secret, NOW)
    signing.verify(scheme, headers, BODY, (b"other:one", secret), NOW)
    if isinstance(scheme, Hmac):
        assert "does not match" in _refused(scheme, headers, BODY + b"x", secret)


def test_none_accepts_without_any_header() -> None:
    signing.verify(signing.SCHEMES["none"], {}, BODY, (), NOW)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=120), alg=st.text(max_size=20), ts=st.text(max_size=12))
def test_no_header_value_raises_anything_but_a_refusal(value: str, alg: str, ts: str) -> None:
    schemes = [signing.STRIPE, signing.SUMSUB, signing.SCHEMES["basic"], signing.SCHEMES["hmac_sha256_base64"]]
    schemes.append(Hmac(header="stripe-signature", signed="{t}.{body}", timestamp_header="x-ts", tolerance_s=5))
    headers = {"stripe-signature": value, "x-payload-digest": value, "x-payload-digest-alg": alg}
    headers |= {"authorization": value, "x-signature": value, "x-ts": ts}
    for scheme in schemes:
        with contextlib.suppress(SignatureRefused):
            signing.verify(scheme, headers, BODY, (SECRET,), NOW)


def test_a_source_names_a_scheme_or_takes_its_providers_in_the_header_config_gives() -> None:
    metamap = AuthSpec(scheme="hmac_sha256", header="x-signature")
    assert signing.resolve(metamap, None, None) == Hmac(header="x-signature", prefix="sha256=")
    assert signing.resolve(metamap, "hmac_sha256", None).header == "x-signature"  # its own: its header
    assert signing.resolve(AuthSpec(scheme="bearer"), "api_key", None) == signing.Token("x-api-key")
    assert signing.resolve(AuthSpec(scheme="bearer"), "header_token", None) == signing.Token("authorization")
    assert signing.resolve(signing.ONFIDO, None, "x-other") == replace(signing.ONFIDO, header="x-other")
    assert signing.resolve(AuthSpec(scheme="bearer"), "stripe", None) is signing.STRIPE
    assert signing.name_of(signing.STRIPE) == "stripe" and signing.name_of(Hmac(header="x-custom")) is None
    assert signing.STRIPE.format == Pairs(timestamp="t", signature="v1") and signing.STRIPE.tolerance_s == 300
