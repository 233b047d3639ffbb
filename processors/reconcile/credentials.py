"""Provider API credentials for polls and fetches, as providers issue them.

- `poll.token` (or `poll.token_file`, read again when it changes): a static API key or secret
  (esign's OneKYC token, Xendit's secret key, Incode's API key).
- `poll.oauth2`: OAuth2 client credentials (Signicat's and MetaMap's APIs take short-lived bearer
  tokens). The token is fetched with authlib, cached, fetched again shortly before it expires and
  once after the API refuses it; it is never logged.
- `poll.executive_login`: Incode's executive login (POST /executive/log-in with a dashboard user's
  email and password, the API key as x-api-key): its token is Incode's executive token, the
  X-Incode-Hardware-Id of Fetch Scores, and lives 24 hours; kept and renewed the same way.
A token endpoint (or login) that fails is a CredentialError: the poll or fetch is tried again later,
never dead-lettered (only a refusal of a freshly fetched token is `unauthorized`). Concurrent polls
share one token: one token request per expiry, and one per refusal of the token in use.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import httpx
import orjson
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from processors.errors import KycstreamError
from processors.model import ApiCredentials
from processors.reconcile.pollsettings import ExecutiveLoginSettings, OAuth2Settings, PollSettings
from processors.secretfile import SecretFile

_LEEWAY_S = 30.0  # fetch a new token this long before the current one expires (a tenth of short ones)


class CredentialError(KycstreamError):
    """The credential itself could not be obtained (token endpoint down or refusing the client)."""


class Credentials(Protocol):
    async def current(self) -> ApiCredentials: ...

    def refused(self, credentials: ApiCredentials) -> bool:
        """The API refused `credentials` (from current()): True when the next current() brings a
        fresh one (fetched now, or already since `credentials` were handed out)."""
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

    def refused(self, credentials: ApiCredentials) -> bool:
        return False

    async def aclose(self) -> None:
        pass


def _leeway(lifetime_s: float) -> float:
    return min(_LEEWAY_S, lifetime_s / 10)


BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


def backoff_s(failures: int) -> float:
    """The wait before asking the token endpoint again after `failures` failures in a row: doubling
    from 1 s up to 60 s, each with up to 20 % jitter (many reconcilers must not ask in step)."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (failures - 1))) * (1 - 0.2 * random.random())


class _CachedToken:
    """A token shared by concurrent callers: fetched by one of them (the others wait for it) when
    there is none or it is due for renewal; dropped when the API refuses it, once. After a failed
    fetch the endpoint is not asked again before the backoff has passed: meanwhile callers get the
    same CredentialError at once (their polls end `credential_failed` and are tried again later)."""

    def __init__(self, fetch: Callable[[], Awaitable[tuple[str, float]]], clock: Callable[[], float]) -> None:
        """`fetch`: a new token and its lifetime in seconds."""
        self._fetch = fetch
        self._clock = clock
        self._lock = asyncio.Lock()
        self.token: str | None = None
        self._renew_at = 0.0
        self.failures = 0  # failed fetches in a row
        self._failed: CredentialError | None = None
        self._retry_at = 0.0

    def _due(self) -> bool:
        return self.token is None or self._clock() >= self._renew_at

    async def current(self) -> str:
        if self._due():
            async with self._lock:
                if self._due():  # nobody fetched one while this caller waited
                    await self._renew()
        assert self.token is not None
        return self.token

    async def _renew(self) -> None:
        asked_at = self._clock()  # the lifetime runs from the request: its latency is spent
        if self._failed is not None and asked_at < self._retry_at:
            raise CredentialError(f"{self._failed} (asked again in {self._retry_at - asked_at:.0f}s)")
        try:
            token, lifetime = await self._fetch()
        except CredentialError as exc:
            self.failures += 1
            self._failed, self._retry_at = exc, asked_at + backoff_s(self.failures)
            raise
        self.failures, self._failed = 0, None
        self.token, self._renew_at = token, asked_at + lifetime - _leeway(lifetime)

    def refused(self, token: str | None) -> bool:
        if token is not None and token == self.token:
            self.token = None
        return True


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
        self._client = AsyncOAuth2Client(
            client_id=oauth2.client_id,
            client_secret=self._client_secret(),
            scope=" ".join(oauth2.scopes) or None,
            token_endpoint_auth_method=oauth2.auth_method,
            timeout=oauth2.timeout_s,
            transport=transport,
        )
        self._token = _CachedToken(self._fetch, clock)

    async def current(self) -> ApiCredentials:
        token = await self._token.current()
        return ApiCredentials(token, self._admin_file.value if self._admin_file else self._admin)

    def _client_secret(self) -> str:
        if self._secret_file is not None:
            return self._secret_file.value
        assert self._settings.client_secret is not None  # the settings require one of the two
        return self._settings.client_secret.get_secret_value()

    def refused(self, credentials: ApiCredentials) -> bool:
        return self._token.refused(credentials.token)

    async def _fetch(self) -> tuple[str, float]:
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
        return access, lifetime

    async def aclose(self) -> None:
        await self._client.aclose()


def _jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds left by the token's `exp` claim if it is a JWT (Incode's are), unverified: only to
    know when to log in again; None if it carries none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) - now if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class ExecutiveLogin:
    """Incode's executive login: the API key (`poll.token` / `token_file`) as x-api-key, and the
    executive token (admin_token, X-Incode-Hardware-Id) from POST {base_url}/executive/log-in with
    the dashboard user's email and password. The token lives 24 hours (Incode), or until its JWT
    `exp`: logged in again shortly before then and once after the API refuses it."""

    def __init__(
        self,
        settings: PollSettings,
        login: ExecutiveLoginSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_token_request: Callable[[bool], None] = lambda ok: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key = StaticCredentials(settings)
        self._login = login
        self._url = settings.base_url + login.path
        self._password_file = _file(login.password_file)
        self._on_token_request = on_token_request
        self._clock = clock
        self._client = httpx.AsyncClient(transport=transport, timeout=login.timeout_s)
        self._token = _CachedToken(self._fetch, clock)
        self._key = ""

    async def current(self) -> ApiCredentials:
        self._key = (await self._api_key.current()).token
        return ApiCredentials(self._key, await self._token.current())

    def refused(self, credentials: ApiCredentials) -> bool:
        return self._token.refused(credentials.admin_token)

    def _password(self) -> str:
        if self._password_file is not None:
            return self._password_file.value  # a rotated password file takes effect at the next login
        assert self._login.password is not None  # the settings require one of the two
        return self._login.password.get_secret_value()

    async def _fetch(self) -> tuple[str, float]:
        body = {"email": self._login.email, "password": self._password()}
        headers = {"x-api-key": self._key, "api-version": "1.0"}
        try:
            response = await self._client.post(self._url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            self._on_token_request(False)
            raise CredentialError(f"the executive login {self._url} failed: {type(exc).__name__}") from exc
        self._on_token_request(response.status_code == 200)
        if response.status_code in (401, 403):
            raise CredentialError(
                f"the executive login {self._url} refused {self._login.email} (HTTP {response.status_code}): "
                "check poll.executive_login.email and password, and the API key (poll.token)"
            )
        if response.status_code != 200:
            raise CredentialError(f"the executive login {self._url} answered HTTP {response.status_code}")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise CredentialError(f"the executive login {self._url} answered no token")
        lifetime = _jwt_lifetime(token, self._clock())
        # An exp already past by this clock (skew) is not believed: the configured lifetime, and a 401 renews.
        return token, min(lifetime, self._login.lifetime_s) if lifetime and lifetime > 0 else self._login.lifetime_s

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
    if settings.executive_login is not None:
        return ExecutiveLogin(
            settings, settings.executive_login, transport=transport, on_token_request=on_token_request
        )
    return StaticCredentials(settings)
