"""How the reconciler reaches a source's provider API (`sources.<name>.poll`): the base URL, limits
and credentials (a static token or file, OAuth2 client credentials, Incode's executive login).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from processors.model import ApiCredentials
from processors.secretfile import secret as _secret
from processors.section import Section


class OAuth2Settings(Section):
    """OAuth2 client credentials for a provider API that takes short-lived bearer tokens."""

    token_url: str = Field(description="the provider's token endpoint")
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = Field(None, description="or a file holding it, read again when it changes")
    scopes: list[str] = Field(default_factory=list)
    audience: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout_s: float = Field(10.0, gt=0)
    default_lifetime_s: float = Field(300.0, gt=0, description="when the token answer has no expires_in")

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return secure_url(value)

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError("client_secret: Field required: give client_secret or client_secret_file, one of the two")
        return self


class ExecutiveLoginSettings(Section):
    """Incode's executive login: the executive token (X-Incode-Hardware-Id, for Fetch Scores) from a
    dashboard user's email and password, logged in again before it expires."""

    email: str = Field(description="the Incode dashboard user of your delivery document (not a secret)")
    password: SecretStr | None = None
    password_file: Path | None = Field(None, description="or a file holding it, read again when it changes")
    path: str = Field("/executive/log-in", description="under poll.base_url")
    lifetime_s: float = Field(
        24 * 3600.0, gt=0, description="Incode's token lifetime (24 h) when the token carries no exp claim"
    )
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError(f"{value!r} is no email: the Incode dashboard user that logs in for the executive token")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with / (a path under poll.base_url, e.g. /executive/log-in)")
        return value

    def credentials(self) -> tuple[str, str]:
        """(email, password) as configured now (a password_file read)."""
        return self.email, _secret(self.password, self.password_file) or ""

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("password: Field required: give password or password_file, one of the two")
        return self


class PollSettings(Section):
    """How the reconciler reaches a source's provider API (status polls and result fetches)."""

    base_url: str = Field(description="e.g. https://api.provider.example (no trailing path)")
    # Required, unless token_file or oauth2 is given (then None): a missing credential is reported
    # as sources.<name>.poll.token with its variable, KYCSTREAM_SOURCES__<NAME>__POLL__TOKEN.
    token: SecretStr | None = Field(description="a static API credential (token, API key or secret key)")
    token_file: Path | None = Field(None, description="or a file holding it, read again when it changes")
    oauth2: OAuth2Settings | None = Field(None, description="or OAuth2 client credentials, refreshed as they expire")
    admin_token: SecretStr | None = Field(
        None, description="a second credential where a result API needs one (Incode: the executive token)"
    )
    admin_token_file: Path | None = Field(None, description="or a file holding it, read again when it changes")
    executive_login: ExecutiveLoginSettings | None = Field(
        None, description="or (Incode) log in for the executive token, again before it expires"
    )
    window_s: int = Field(600, ge=1, description="poll a verification with no final result after this long")
    rate_per_s: float = Field(2.0, gt=0)
    concurrency: int = Field(4, ge=1, le=256)
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=20, description="tries per poll on 5xx and timeouts (backoff, jitter)")
    give_up_after_s: int = Field(24 * 3600, ge=1)
    fetch_backoff_s: float = Field(
        1.0, gt=0, description="a fetched result not ready yet is fetched again after this, doubling (max 5 min)"
    )
    fetch_give_up_after_s: int = Field(3600, ge=1, description="stop fetching a result not ready after this long")

    def credentials(self) -> ApiCredentials:
        """The credentials as configured now (files read; with oauth2 the token is fetched instead:
        processors.reconcile.credentials keeps them current)."""
        return ApiCredentials(
            _secret(self.token, self.token_file) or "", _secret(self.admin_token, self.admin_token_file)
        )

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: set the provider API credential (e.g. KYCSTREAM_SOURCES__<NAME>__POLL__TOKEN)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _token_alternatives(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("token") is None and (data.get("token_file") or data.get("oauth2")):
            return {**data, "token": None}
        return data

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        given = [name for name in ("token", "token_file", "oauth2") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "token: Field required: give the provider API credential as a static token "
                "(KYCSTREAM_SOURCES__<NAME>__POLL__TOKEN), a token_file, or oauth2 client credentials: "
                f"one of them, not {' and '.join(given) or 'none'}"
            )
        admins = [n for n in ("admin_token", "admin_token_file", "executive_login") if getattr(self, n) is not None]
        if len(admins) > 1:
            raise ValueError(
                f"{' and '.join(admins)}: give one of them (the executive token as admin_token or "
                "admin_token_file, or executive_login to log in for it)"
            )
        if self.executive_login is not None and self.oauth2 is not None:
            raise ValueError("executive_login needs the API key as token or token_file (x-api-key), not oauth2")
        return self

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return secure_url(value).rstrip("/")


def secure_url(value: str) -> str:
    """`value` if it is https://, or http:// to a loopback host (a local stand-in); these URLs carry
    API keys, passwords and client secrets, which plain HTTP would send in clear text."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return value
    if parts.scheme == "http":
        raise ValueError(
            f"{value!r} is plain http:// to a host off this machine: the API credential would cross the network "
            "in clear text. Use https:// (http:// is for a stand-in on 127.0.0.1, ::1 or localhost only)"
        )
    raise ValueError(f"{value!r} must start with https:// (or http:// for a stand-in on 127.0.0.1, ::1 or localhost)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
