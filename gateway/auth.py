"""Authentication of deliveries: a source's declared scheme (processors.signing) checked against its
credentials (those of its credentials_file as the file is now), refusals answered as 401."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from gateway.errors import Unauthorized
from processors import logs, signing
from processors.secretfile import SecretFile

_log = logs.get("kycstream.gateway")


@dataclass(frozen=True)
class Authenticator:
    scheme: signing.Scheme
    credentials: tuple[bytes, ...]
    clock: Callable[[], float] = time.time  # seconds since the epoch, for timestamp tolerances

    @classmethod
    def named(cls, name: str, header: str, credentials: tuple[bytes, ...]) -> Authenticator:
        """One of the schemes config can name (`auth.scheme`), in `header`."""
        return cls(replace(signing.SCHEMES[name], header=header), credentials)

    def check(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise Unauthorized unless the delivery carries one of the credentials."""
        try:
            signing.verify(self.scheme, headers, body, self.credentials, self.clock())
        except signing.SignatureRefused as exc:
            raise Unauthorized(str(exc)) from exc


class AcceptedCredentials:
    """A source's accepted credentials: those of the config, plus those of its credentials_file as
    the file is now (the Authenticator is rebuilt only when the file changed)."""

    def __init__(self, scheme: signing.Scheme, fixed: tuple[bytes, ...], file: SecretFile | None) -> None:
        self._scheme, self._fixed, self._file = scheme, fixed, file
        self._lines: tuple[str, ...] | None = None
        self._current = Authenticator(scheme, fixed)

    def check(self, headers: Mapping[str, str], body: bytes) -> None:
        if self._file is not None and (lines := self._file.values) is not self._lines:
            if isinstance(self._scheme, signing.Basic) and any(":" not in line for line in lines):
                _log.error("credentials_file_invalid", path=str(self._file.path), problem="basic needs user:password")
            else:
                self._current = Authenticator(self._scheme, (*self._fixed, *(x.encode() for x in lines)))
            self._lines = lines
        self._current.check(headers, body)
