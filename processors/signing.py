"""Signing schemes as data: how a provider proves a delivery is its own, and the one pure check of it.

A provider module declares its scheme (`DEFAULT_AUTH = signing.ONFIDO`, or its own `Hmac(...)`); a
source may name another in config (`auth.scheme`, one of `SCHEMES`). The check runs over the raw
body bytes before anything parses them, tries every configured secret (rotation), compares in
constant time without an early exit, and turns every malformed header into a `SignatureRefused`
with a reason, never a stray ValueError. The clock is passed in, so tests fix it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from processors.errors import KycstreamError
from processors.model import AuthSpec

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]
_TEMPLATE_PARTS = {"t", "body"}
_PAIR_SEPARATORS = re.compile(r"[,\s]+")


class SignatureRefused(KycstreamError):
    """The delivery does not prove it comes from the provider; the message says why (never a secret)."""


@dataclass(frozen=True)
class Unsigned:
    """No credential at all: the source's allow_ips is what admits a delivery (it is required)."""

    header: str = "authorization"  # unused; every scheme has one so config can override it uniformly


@dataclass(frozen=True)
class Token:
    """The header's value is the secret itself (Xendit's x-callback-token, an API key header)."""

    header: str


@dataclass(frozen=True)
class Bearer:
    header: str = "authorization"


@dataclass(frozen=True)
class Basic:
    """`Basic base64(user:password)`; the configured secrets are written user:password."""

    header: str = "authorization"


@dataclass(frozen=True)
class Pairs:
    """The header is `k=v` pairs, comma- or space-separated: a timestamp and one or more signatures
    (several during a secret rotation: Stripe `t=…,v1=…,v1=…`; Persona `t=…,v1=… t=…,v1=…`). A
    signature goes with the timestamp before it (or the first one). Other keys are ignored."""

    timestamp: str = "t"
    signature: str = "v1"


@dataclass(frozen=True)
class Hmac:
    """An HMAC of `signed` (a template over the raw body and the timestamp) in `header`."""

    header: str
    algorithm: Algorithm = "sha256"
    # Or named per delivery by a second header, through this mapping (Sumsub X-Payload-Digest-Alg).
    algorithm_header: str | None = None
    algorithms: tuple[tuple[str, Algorithm], ...] = ()
    encoding: Encoding = "hex"
    prefix: str = ""  # may come before the signature, e.g. "sha256=" (stripped when present)
    signed: str = "{body}"  # what is signed: {body} the raw bytes, {t} the timestamp as sent
    format: Pairs | None = None  # None: the header is one signature
    timestamp_header: str | None = None  # the timestamp in its own header, rather than a pair
    tolerance_s: float | None = None  # refuse a timestamp further than this from now

    def __post_init__(self) -> None:
        parts = [name for _, name, _, _ in string.Formatter().parse(self.signed) if name is not None]
        if set(parts) - _TEMPLATE_PARTS or parts.count("body") != 1:
            raise ValueError(f"Hmac(signed={self.signed!r}): the template takes {{body}} once and optionally {{t}}")
        if self.needs_timestamp and self.format is None and self.timestamp_header is None:
            raise ValueError("Hmac: a timestamp is used but neither format=Pairs(...) nor timestamp_header gives it")
        if (self.algorithm_header is None) != (not self.algorithms):
            raise ValueError("Hmac: algorithm_header and algorithms are declared together")
        if self.algorithms and self.algorithm not in dict(self.algorithms).values():
            raise ValueError("Hmac: algorithm (the one sign() uses) must be one of algorithms")

    @property
    def needs_timestamp(self) -> bool:
        return "{t}" in self.signed or self.tolerance_s is not None


Scheme = Unsigned | Token | Bearer | Basic | Hmac

# Presets a provider module uses as its DEFAULT_AUTH (each checked against the provider's docs/SDK).
ONFIDO = Hmac(header="x-sha2-signature")  # hex HMAC-SHA256 of the body with the webhook token
VERIFF = Hmac(header="x-hmac-signature")  # hex HMAC-SHA256 of the body with the shared secret
SUMSUB = Hmac(
    header="x-payload-digest",
    algorithm_header="x-payload-digest-alg",
    algorithms=(("HMAC_SHA1_HEX", "sha1"), ("HMAC_SHA256_HEX", "sha256"), ("HMAC_SHA512_HEX", "sha512")),
)
STRIPE = Hmac(header="stripe-signature", signed="{t}.{body}", format=Pairs(), tolerance_s=300)
# Persona documents no tolerance; Stripe's 300 s keeps a replayed delivery out all the same.
PERSONA = Hmac(header="persona-signature", signed="{t}.{body}", format=Pairs(), tolerance_s=300)

# The names `auth.scheme` takes in config. The first six are those kycstream always had (their
# header is the default one unless auth.header says otherwise); the rest are presets.
SCHEMES: Mapping[str, Scheme] = {
    "header_token": Token("authorization"),
    "api_key": Token("x-api-key"),
    "bearer": Bearer(),
    "basic": Basic(),
    "hmac_sha256": Hmac(header="x-signature", prefix="sha256="),
    "none": Unsigned(),
    "hmac_sha1": Hmac(header="x-signature", algorithm="sha1", prefix="sha1="),
    "hmac_sha512": Hmac(header="x-signature", algorithm="sha512", prefix="sha512="),
    "hmac_sha256_base64": Hmac(header="x-signature", encoding="base64"),
    "onfido": ONFIDO,
    "sumsub": SUMSUB,
    "veriff": VERIFF,
    "persona": PERSONA,
    "stripe": STRIPE,
}


def declared(default: AuthSpec | Scheme) -> Scheme:
    """A provider's DEFAULT_AUTH as a declaration (an AuthSpec names one of SCHEMES, with its header)."""
    if isinstance(default, AuthSpec):
        return replace(SCHEMES[default.scheme], header=default.header)
    return default


def name_of(scheme: AuthSpec | Scheme) -> str | None:
    """The config name of a provider's default scheme, if it has one."""
    if isinstance(scheme, AuthSpec):
        return scheme.scheme
    return next((name for name, known in SCHEMES.items() if known == scheme), None)


def resolve(default: AuthSpec | Scheme, name: str | None, header: str | None) -> Scheme:
    """A source's scheme: the one config names (else the provider's), in config's header if given.
    A named scheme that is the provider's own keeps the provider's header."""
    scheme = declared(default) if name is None or name == name_of(default) else SCHEMES[name]
    return replace(scheme, header=header) if header else scheme


def verify(scheme: Scheme, headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: float) -> None:
    """Raise SignatureRefused unless the delivery proves one of `secrets`. `headers` have lower-case
    names; `now` is seconds since the epoch."""
    if isinstance(scheme, Unsigned):
        return
    value = _header(headers, scheme.header)
    if isinstance(scheme, Hmac):
        matched = _hmac_matches(scheme, value, headers, body, secrets, now)
    else:
        presented = _presented(scheme, value)
        matched = False
        for secret in secrets:  # no early exit: the time taken does not say which one matched
            matched |= hmac.compare_digest(presented, secret)
    if not matched:
        raise SignatureRefused(f"{scheme.header} does not match any configured credential")


def sign(scheme: Scheme, body: bytes, secret: bytes, now: float) -> dict[str, str]:
    """The headers a provider using `scheme` sends with `body` (for tests and signature vectors)."""
    if isinstance(scheme, Unsigned):
        return {}
    if isinstance(scheme, Token):
        return {scheme.header: secret.decode()}
    if isinstance(scheme, Bearer):
        return {scheme.header: f"Bearer {secret.decode()}"}
    if isinstance(scheme, Basic):
        return {scheme.header: "Basic " + base64.b64encode(secret).decode()}
    t = str(int(now))
    headers: dict[str, str] = {}
    algorithm = scheme.algorithm
    if scheme.algorithms:
        alg_name, algorithm = next((n, a) for n, a in scheme.algorithms if a == scheme.algorithm)
        headers[scheme.algorithm_header or ""] = alg_name
    digest = hmac.digest(secret, _message(scheme.signed, body, t), algorithm)
    encoded = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    if scheme.timestamp_header is not None:
        headers[scheme.timestamp_header] = t
    if scheme.format is not None:
        pair_t = f"{scheme.format.timestamp}={t}," if scheme.timestamp_header is None else ""
        encoded = f"{pair_t}{scheme.format.signature}={encoded}"
    headers[scheme.header] = encoded
    return headers


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if value is None:
        raise SignatureRefused(f"missing {name} header")
    return value.strip()


def _presented(scheme: Token | Bearer | Basic, value: str) -> bytes:
    if isinstance(scheme, Token):
        return value.encode()
    word = "Bearer" if isinstance(scheme, Bearer) else "Basic"
    prefix, _, rest = value.partition(" ")
    if prefix.lower() != word.lower() or not rest.strip():
        raise SignatureRefused(f"{scheme.header} must be '{word} <credential>'")
    if isinstance(scheme, Bearer):
        return rest.strip().encode()
    try:
        return base64.b64decode(rest.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRefused(f"{scheme.header} Basic credential is not valid base64") from exc


def _hmac_matches(
    scheme: Hmac, value: str, headers: Mapping[str, str], body: bytes, secrets: Sequence[bytes], now: float
) -> bool:
    algorithm = _algorithm(scheme, headers)
    candidates = _candidates(scheme, value, headers)
    if scheme.needs_timestamp:
        for t, _ in candidates:
            _check_time(scheme, t, now)
    signatures = _decoded(scheme, candidates)
    matched = False
    for t in dict.fromkeys(t for t, _ in signatures):
        message = _message(scheme.signed, body, t)
        for secret in secrets:  # every secret and every signature: no early exit
            expected = hmac.digest(secret, message, algorithm)
            for signed_at, presented in signatures:
                matched |= hmac.compare_digest(presented, expected) and signed_at == t
    return matched


def _algorithm(scheme: Hmac, headers: Mapping[str, str]) -> str:
    if scheme.algorithm_header is None:
        return scheme.algorithm
    name = _header(headers, scheme.algorithm_header)
    known = dict(scheme.algorithms)
    if name not in known:
        raise SignatureRefused(
            f"{scheme.algorithm_header} names an unknown algorithm {name[:40]!r}; known: {', '.join(known)}"
        )
    return known[name]


def _candidates(scheme: Hmac, value: str, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(timestamp as sent, signature text) for every signature the delivery presents."""
    fixed_t = _header(headers, scheme.timestamp_header) if scheme.timestamp_header is not None else ""
    if scheme.format is None:
        return [(fixed_t, value)]
    t_key, sig_key = scheme.format.timestamp, scheme.format.signature
    pairs: list[tuple[str, str]] = []
    for token in filter(None, _PAIR_SEPARATORS.split(value)):
        key, eq, text = token.partition("=")
        if not eq:
            raise SignatureRefused(f"{scheme.header} must be {t_key}=…,{sig_key}=… pairs")
        pairs.append((key, text))
    times = [text for key, text in pairs if key == t_key]
    if not times and not fixed_t and scheme.needs_timestamp:
        raise SignatureRefused(f"{scheme.header} has no {t_key}= timestamp")
    candidates, current = [], fixed_t or (times[0] if times else "")
    for key, text in pairs:
        if key == t_key and not fixed_t:
            current = text
        elif key == sig_key:
            candidates.append((current, text))
    if not candidates:
        raise SignatureRefused(f"{scheme.header} has no {sig_key}= signature")
    return candidates


def _check_time(scheme: Hmac, t: str, now: float) -> None:
    if not t.isascii() or not t.isdigit():
        raise SignatureRefused(f"{scheme.header}: the timestamp must be whole seconds since the epoch")
    if scheme.tolerance_s is not None and abs(now - int(t)) > scheme.tolerance_s:
        raise SignatureRefused(
            f"{scheme.header}: the timestamp is {abs(now - int(t)):.0f} s from now, outside the "
            f"{scheme.tolerance_s:.0f} s tolerance (a replay, or a clock to fix)"
        )


def _decoded(scheme: Hmac, candidates: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """The candidates whose signature decodes. Among several (a rotation), one the scheme cannot read
    is skipped, as Stripe's own verifier does; a header none of whose signatures decodes is refused."""
    if len(candidates) == 1:
        return [(candidates[0][0], _decode(scheme, candidates[0][1]))]
    readable = []
    for t, text in candidates:
        try:
            readable.append((t, _decode(scheme, text)))
        except SignatureRefused:
            continue
    if not readable:
        _decode(scheme, candidates[0][1])  # raises, saying what the signature must be
    return readable


def _decode(scheme: Hmac, text: str) -> bytes:
    text = text.removeprefix(scheme.prefix).strip() if scheme.prefix else text.strip()
    try:
        if scheme.encoding == "hex":
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRefused(
            f"{scheme.header} must be the {scheme.encoding} HMAC of the signed bytes ({scheme.signed})"
        ) from exc


def _message(template: str, body: bytes, t: str) -> bytes:
    if template == "{body}":
        return body
    before, _, after = template.partition("{body}")
    return before.format(t=t).encode() + body + after.format(t=t).encode()
