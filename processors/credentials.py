"""Provider API credentials for polls and fetches, as providers issue them.

- `poll.token` (or `poll.token_file`, read again when it changes): a static API key or secret
  (esign's OneKYC token, Xendit's secret key, Incode's API key).
- `poll.oauth2`: OAuth2 client credentials (Signicat's and MetaMap's APIs take short-lived bearer
  tokens). The token is fetched with authlib, cached, fetched again shortly before it expires and
  once after the API refuses it; it is never logged.
A token endpoint that fails is a CredentialError: the poll or fetch is tried again later, never
dead-lettered (only a refusal of a freshly fetched token is `unauthorized`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from processors.errors import KycstreamError
from processors.model import ApiCredentials
from processors.secretfile import SecretFile
from processors.settings import OAuth2Settings, PollSettings

_LEEWAY_S = 30.0  # fetch a new token this long before the current one expires (a tenth of short ones)


class CredentialError(KycstreamError):
    """The credential itself could not be obtained (token endpoint down or refusing the client)."""


class Credentials(Protocol):
    async def current(self) -> ApiCredentials: ...

    def refused(self) -> bool:
        """The API refused what current() gave: True when the next current() brings a fresh one."""
        ...

    async def aclose(self) -> None: ...


def _file(path: Path | None) -> SecretFile | None:
    return SecretFile(path) if path is not None else None


class StaticCredentials:
    """`poll.token` / `poll.token_file` (and the admin token): a file is read again when it changes."""

    def __init__(self, settings: PollSettings) -> None:
        self._credentials = settings.credentials()
        self._token_file = _file(settings.token_file)
        self._admin_file = _file(settings.admin_token_file)

    async def current(self) -> ApiCredentials:
        if self._token_file is None and self._admin_file is None:
            return self._credentials
        token = self._token_file.value if self._token_file else self._credentials.token
        admin = self._admin_file.value if self._admin_file else self._credentials.admin_token
        return ApiCredentials(token, admin)

    def refused(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


class ClientCredentials:
    """OAuth2 client-credentials grant; `on_token_request(ok)` counts each call to the token endpoint."""

    def __init__(
        self,
        oauth2: OAuth2Settings,
        admin_token: str | None,
        *,
        admin_token_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_token_request: Callable[[bool], None] = lambda ok: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = oauth2
        self._admin = admin_token
        self._admin_file = _file(admin_token_file)
        self._secret_file = _file(oauth2.client_secret_file)
        self._on_token_request = on_token_request
        self._clock = clock
        self._client = AsyncOAuth2Client(
            client_id=oauth2.client_id,
            client_secret=self._client_secret(),
            scope=" ".join(oauth2.scopes) or None,
            token_endpoint_auth_method=oauth2.auth_method,
            timeout=oauth2.timeout_s,
            transport=transport,
        )
        self._token: str | None = None
        self._renew_at = 0.0

    async def current(self) -> ApiCredentials:
        if self._token is None or self._clock() >= self._renew_at:
            await self._fetch()
        assert self._token is not None
        return ApiCredentials(self._token, self._admin_file.value if self._admin_file else self._admin)

    def _client_secret(self) -> str:
        if self._secret_file is not None:
            return self._secret_file.value
        assert self._settings.client_secret is not None  # the settings require one of the two
        return self._settings.client_secret.get_secret_value()

    def refused(self) -> bool:
        self._token = None
        return True

    async def _fetch(self) -> None:
        extra = {"audience": self._settings.audience} if self._settings.audience else {}
        self._client.client_secret = self._client_secret()  # a rotated secret file takes effect here
        try:
            token = await self._client.fetch_token(self._settings.token_url, grant_type="client_credentials", **extra)
        except (OAuthError, httpx.HTTPError, ValueError) as exc:
            self._on_token_request(False)
            error = getattr(exc, "error", None) or type(exc).__name__  # the OAuth error code, never the secret
            raise CredentialError(f"the token endpoint {self._settings.token_url} failed: {error}") from exc
        self._on_token_request(True)
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise CredentialError(f"the token endpoint {self._settings.token_url} answered no access_token")
        expires_in = token.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else self._settings.default_lifetime_s
        self._token, self._renew_at = access, self._clock() + lifetime - min(_LEEWAY_S, lifetime / 10)

    async def aclose(self) -> None:
        await self._client.aclose()


def credentials_for(
    settings: PollSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_token_request: Callable[[bool], None] = lambda ok: None,
) -> Credentials:
    if settings.oauth2 is not None:
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        return ClientCredentials(
            settings.oauth2,
            admin,
            admin_token_file=settings.admin_token_file,
            transport=transport,
            on_token_request=on_token_request,
        )
    return StaticCredentials(settings)
