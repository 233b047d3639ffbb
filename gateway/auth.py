"""Authentication of deliveries: pure checks over the headers and the raw body bytes, against the
source's credentials (those of its credentials_file as the file is now).

Every comparison is constant-time, every configured credential is tried (rotation), and every
malformed header becomes an `Unauthorized` with a reason, never a stray ValueError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import Unauthorized
from processors import logs
from processors.model import AuthScheme
from processors.secretfile import SecretFile

_log = logs.get("kycstream.gateway")


@dataclass(frozen=True)
class Authenticator:
    scheme: AuthScheme
    header: str
    credentials: tuple[bytes, ...]

    def check(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise Unauthorized unless the delivery carries one of the credentials."""
        if self.scheme == "none":
            return
        value = headers.get(self.header)
        if value is None:
            raise Unauthorized(f"missing {self.header} header")
        presented = _presented(self.scheme, self.header, value.strip(), body, self.credentials)
        if not _any_equal(presented, self.credentials, self.scheme, body):
            raise Unauthorized(f"{self.header} does not match any configured credential")


class AcceptedCredentials:
    """A source's accepted credentials: those of the config, plus those of its credentials_file as
    the file is now (the Authenticator is rebuilt only when the file changed)."""

    def __init__(self, scheme: AuthScheme, header: str, fixed: tuple[bytes, ...], file: SecretFile | None) -> None:
        self._scheme, self._header, self._fixed, self._file = scheme, header, fixed, file
        self._lines: tuple[str, ...] | None = None
        self._current = Authenticator(scheme, header, fixed)

    def check(self, headers: Mapping[str, str], body: bytes) -> None:
        if self._file is not None and (lines := self._file.values) is not self._lines:
            if self._scheme == "basic" and any(":" not in line for line in lines):
                _log.error("credentials_file_invalid", path=str(self._file.path), problem="basic needs user:password")
            else:
                self._current = Authenticator(self._scheme, self._header, (*self._fixed, *(x.encode() for x in lines)))
            self._lines = lines
        self._current.check(headers, body)


def _presented(scheme: AuthScheme, header: str, value: str, body: bytes, credentials: Sequence[bytes]) -> bytes:
    if scheme in ("bearer", "basic"):
        prefix, _, rest = value.partition(" ")
        if prefix.lower() != scheme or not rest.strip():
            raise Unauthorized(f"{header} must be '{scheme.capitalize()} <credential>'")
        if scheme == "bearer":
            return rest.strip().encode()
        try:
            return base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Unauthorized(f"{header} Basic credential is not valid base64") from exc
    if scheme == "hmac_sha256":
        signature = value.removeprefix("sha256=").strip().lower()
        try:
            return bytes.fromhex(signature)
        except ValueError as exc:
            raise Unauthorized(f"{header} must be the hex HMAC-SHA256 of the body") from exc
    return value.encode()


def _any_equal(presented: bytes, credentials: Sequence[bytes], scheme: AuthScheme, body: bytes) -> bool:
    matched = False
    for secret in credentials:  # no early exit: the time taken does not say which one matched
        expected = hmac.new(secret, body, hashlib.sha256).digest() if scheme == "hmac_sha256" else secret
        matched |= hmac.compare_digest(presented, expected)
    return matched
