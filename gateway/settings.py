"""Gateway settings: the shared Kafka/topic sections, the server, and one entry per source."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from processors import signing
from processors.providers import REGISTRY, providers_known
from processors.reconcile.pollsettings import PollSettings
from processors.section import Section
from processors.settings import Settings

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_METHODS = {"POST", "PUT", "PATCH"}


def _networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or CIDR range (e.g. 10.0.0.0/8)") from exc
    return values


class AuthSettings(Section):
    """How a source's deliveries prove who sent them. Unset fields take the provider's default."""

    # One of processors.signing.SCHEMES: header_token, api_key, bearer, basic, hmac_sha256, none, or a
    # preset (hmac_sha1, hmac_sha512, hmac_sha256_base64, onfido, sumsub, veriff, persona, stripe).
    scheme: str | None = None
    header: str | None = None
    # Several at once so a secret can rotate without downtime. Basic: "user:password".
    credentials: list[SecretStr] = Field(default_factory=list)
    # Or (and) a file of them, one per line, read again when it changes: rotation without a restart.
    credentials_file: Path | None = None

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and value not in signing.SCHEMES:
            raise ValueError(f"unknown auth scheme {value!r}; known schemes: {', '.join(signing.SCHEMES)}")
        return value

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value


class RateLimitSettings(Section):
    per_second: float = Field(gt=0)
    burst: int = Field(0, ge=0, description="0 means per_second rounded up")


class SourceSettings(Section):
    provider: str
    auth: AuthSettings = AuthSettings()
    methods: list[str] | None = None
    allow_ips: list[str] = Field(default_factory=list)
    rate_limit: RateLimitSettings | None = None
    max_body_bytes: int | None = Field(None, ge=1)
    # When Kafka does not acknowledge in time: refuse (the provider retries) or spool (answer 200
    # once the delivery is fsynced in gateway.spool_dir; forwarded to Kafka as soon as it answers).
    on_kafka_unavailable: Literal["refuse", "spool"] = "refuse"
    # The refusal's status (no spool, or the spool full); default: the provider's (docs/providers.md).
    unavailable_status: int | None = Field(None, ge=400, le=599)
    poll: PollSettings | None = None  # read by `kycstream reconcile`

    @property
    def declared_auth(self) -> signing.Scheme:
        """The declared scheme deliveries are checked with: auth.scheme's, else the provider's."""
        return signing.resolve(REGISTRY[self.provider].DEFAULT_AUTH, self.auth.scheme, self.auth.header)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in REGISTRY:
            raise ValueError(f"unknown provider {value!r}; {providers_known()}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        if not upper or set(upper) - _METHODS:
            raise ValueError(f"methods must be a non-empty subset of {sorted(_METHODS)}")
        return upper

    _allow_ips = field_validator("allow_ips")(classmethod(lambda cls, v: _networks(v)))

    @model_validator(mode="after")
    def _resolve_auth(self) -> Self:
        default = REGISTRY[self.provider].DEFAULT_AUTH
        scheme = signing.resolve(default, self.auth.scheme, self.auth.header)
        name = self.auth.scheme or signing.name_of(default)
        given = [c for c in self.auth.credentials if c.get_secret_value()]
        if isinstance(scheme, signing.Unsigned):
            if not self.allow_ips:
                raise ValueError(
                    f"allow_ips: a {self.provider} source with no signature (auth scheme none) is admitted by its "
                    "addresses alone: list the provider's (allow_ips: [0.0.0.0/0, ::/0] admits anyone, on purpose)"
                )
        elif not given and self.auth.credentials_file is None:
            raise ValueError(
                f"auth.credentials: a {self.provider} source with auth scheme {name or type(scheme).__name__!r} needs "
                "at least one credential, or auth.credentials_file (or auth.scheme: none with allow_ips to admit "
                "deliveries by address alone)"
            )
        if isinstance(scheme, signing.Basic) and any(":" not in c.get_secret_value() for c in self.auth.credentials):
            raise ValueError("auth.credentials: basic credentials are written user:password")
        resolved = AuthSettings(
            scheme=name,
            header=scheme.header,
            credentials=self.auth.credentials,
            credentials_file=self.auth.credentials_file,
        )
        object.__setattr__(self, "auth", resolved)
        if self.methods is None:
            object.__setattr__(self, "methods", list(REGISTRY[self.provider].METHODS))
        if self.unavailable_status is None:
            object.__setattr__(self, "unavailable_status", REGISTRY[self.provider].UNAVAILABLE_STATUS)
        return self


class SpoolSettings(Section):
    after_s: float = Field(
        1.0, gt=0, le=60, description="a spooling source waits this long for Kafka's acknowledgement, then spools"
    )
    max_bytes: int = Field(1024**3, ge=1024 * 1024, description="past this the spooling sources refuse")
    max_age_s: float = Field(24 * 3600, gt=0, description="a spool whose oldest record is older refuses more")
    drain_on_exit_s: float = Field(20.0, ge=0, description="on SIGTERM, forward the spool for up to this long")
    dedup_window_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        description="the processors' processor.dedup_window_s: a record forwarded later than this after it was "
        "spooled is past their dedup (a repeat of it could become a second event): forwarded, warned and counted",
    )


class ServerSettings(Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    produce_timeout_s: float = Field(5.0, gt=0, le=60)
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    linger_ms: float = Field(1.0, ge=0)
    trusted_proxies: list[str] = Field(default_factory=list)
    retry_after_s: int = Field(5, ge=1)
    spool_dir: Path = Path("/tmp/kycstream/spool")  # on a volume that outlives the pod (deploy/)
    spool: SpoolSettings = SpoolSettings()
    # Keys for POST /expectations/{source} (Authorization: Bearer <key>); none: the route is off.
    expectations_api_keys: list[SecretStr] = Field(default_factory=list)
    # Or (and) a file of them, one per line, read again when it changes. A file missing at start (an
    # optional Secret not created) leaves the route off, like no key at all.
    expectations_api_keys_file: Path | None = None

    _trusted = field_validator("trusted_proxies")(classmethod(lambda cls, v: _networks(v)))


class GatewaySettings(Settings):
    gateway: ServerSettings = ServerSettings()
    sources: dict[str, SourceSettings] = Field(default_factory=dict)

    @field_validator("sources")
    @classmethod
    def _names(cls, value: dict[str, SourceSettings]) -> dict[str, SourceSettings]:
        for name in value:
            if not _SOURCE_NAME.match(name):
                raise ValueError(
                    f"source name {name!r} must be lowercase letters, digits, - or _ (it is a URL segment)"
                )
        return value

    @property
    def spooling(self) -> list[str]:
        return sorted(name for name, s in self.sources.items() if s.on_kafka_unavailable == "spool")

    def require_sources(self) -> None:
        from processors.errors import ConfigError

        if not self.sources:
            raise ConfigError(
                "no webhook sources are configured: add a `sources:` section to the config file "
                "(see deploy/kycstream.dev.yaml) and pass it with --config or KYCSTREAM_CONFIG"
            )
