"""Settings: one YAML file plus environment overrides, validated at start.

Every role reads the same file and keeps the sections it needs. Precedence, highest first, each
a pydantic-settings source (`Settings.settings_customise_sources`), merged field by field:
  1. arguments: the command line's flags (and keyword arguments in code),
  2. `KYCSTREAM_<SECTION>__<FIELD>` variables (the specific, kycstream-only names),
  3. the plain Kafka variables users expect (`KAFKA_BOOTSTRAP_SERVERS`, `SCHEMA_REGISTRY_URL`, ...,
     or `<VAR>_FILE` naming a file that holds the value),
  4. the config file (`--config`, else $KYCSTREAM_CONFIG),
  5. the defaults here.
"""

from __future__ import annotations

import importlib.util
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from processors.errors import ConfigError
from processors.reconcile.pollsettings import PollSettings, secure_url
from processors.secretfile import read_lines
from processors.section import Section

CONFIG_ENV = "KYCSTREAM_CONFIG"
DAY_MS = 24 * 3600 * 1000

# Plain variables a Kafka user expects to work, mapped onto kafka.* settings.
KAFKA_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_username",
    "KAFKA_SASL_PASSWORD": "sasl_password",
    "KAFKA_SSL_CA_LOCATION": "ssl_ca_location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl_certificate_location",
    "KAFKA_SSL_KEY_LOCATION": "ssl_key_location",
    "KAFKA_SSL_KEY_PASSWORD": "ssl_key_password",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "sasl_oauthbearer_client_id",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "sasl_oauthbearer_client_secret",
    "SCHEMA_REGISTRY_URL": "schema_registry_url",
    "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "schema_registry_basic_auth",
    "SCHEMA_REGISTRY_BEARER_TOKEN": "schema_registry_bearer_token",
    "SCHEMA_REGISTRY_OAUTH_CLIENT_SECRET": "schema_registry_oauth_client_secret",
}
# The secrets of the kafka section: each is given as itself or as `<name>_file`, a file holding it.
KAFKA_SECRETS = (
    "sasl_password",
    "ssl_key_password",
    "sasl_oauthbearer_client_secret",
    "schema_registry_basic_auth",
    "schema_registry_bearer_token",
    "schema_registry_oauth_client_secret",
)
MSK_SIGNER = "aws_msk_iam_sasl_signer"  # the module of the kycstream[msk] extra (aws-msk-iam-sasl-signer-python)


_ACKS = "kycstream answers 200 only once every in-sync replica has the record (acks=all)"
_IDEMPOTENT = "retries must never duplicate or reorder a verification's records (idempotent producer)"
_OFFSETS = "offsets move only after a record's outputs are acknowledged: kycstream stores and commits them"
_OWN = "set it with its own setting: {}"
# The librdkafka properties kafka.extra cannot change, and why: kycstream's guarantees rest on
# them, or a setting of its own sets them (per role where roles differ).
EXTRA_REFUSED: dict[str, str] = {
    "acks": _ACKS,
    "request.required.acks": _ACKS,
    "enable.idempotence": _IDEMPOTENT,
    "transactional.id": _OWN.format("processor.transactional_id (processor.processing_guarantee: exactly_once)"),
    "enable.auto.commit": _OFFSETS,
    "auto.commit.enable": _OFFSETS,
    "enable.auto.offset.store": _OFFSETS,
    "isolation.level": "kycstream reads only committed records (read_committed), so aborted transactions never count",
    "enable.partition.eof": "restores and readers stop at each partition's end, and the processor does not",
    "auto.offset.reset": "a group without a committed offset starts at the earliest record, so none is skipped",
    "group.id": _OWN.format("processor.group_id, reconcile.group_id (the other groups are derived from them)"),
    "group.instance.id": "one value in a config every pod shares would fence all members but one",
    "partition.assignment.strategy": "the processor restores whole assignments as an eager rebalance hands them out",
    "group.protocol": "the processor restores whole assignments as an eager rebalance hands them out",
    "session.timeout.ms": _OWN.format("processor.session_timeout_ms, reconcile.session_timeout_ms"),
    "linger.ms": _OWN.format("gateway.linger_ms, processor.linger_ms"),
    "queue.buffering.max.ms": _OWN.format("gateway.linger_ms, processor.linger_ms"),
    "bootstrap.servers": _OWN.format("kafka.bootstrap_servers"),
    "metadata.broker.list": _OWN.format("kafka.bootstrap_servers"),
    "client.id": _OWN.format("kafka.client_id"),
    "security.protocol": _OWN.format("kafka.security_protocol"),
    "sasl.mechanism": _OWN.format("kafka.sasl_mechanism"),
    "sasl.mechanisms": _OWN.format("kafka.sasl_mechanism"),
    "sasl.username": _OWN.format("kafka.sasl_username"),
    "sasl.password": _OWN.format("kafka.sasl_password (or KAFKA_SASL_PASSWORD_FILE): a secret, never in extra"),
    "sasl.oauthbearer.method": _OWN.format("kafka.sasl_oauthbearer_method (oidc or msk_iam)"),
    "sasl.oauthbearer.client.id": _OWN.format("kafka.sasl_oauthbearer_client_id"),
    "sasl.oauthbearer.client.secret": _OWN.format(
        "kafka.sasl_oauthbearer_client_secret_file (or KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET_FILE): "
        "a secret, never in extra"
    ),
    "sasl.oauthbearer.token.endpoint.url": _OWN.format("kafka.sasl_oauthbearer_token_endpoint_url"),
    "sasl.oauthbearer.scope": _OWN.format("kafka.sasl_oauthbearer_scope"),
    "sasl.oauthbearer.extensions": _OWN.format("kafka.sasl_oauthbearer_extensions"),
    "ssl.key.password": _OWN.format(
        "kafka.ssl_key_password_file (or KAFKA_SSL_KEY_PASSWORD_FILE): a secret, never in extra"
    ),
    "ssl.ca.location": _OWN.format("kafka.ssl_ca_location"),
    "ssl.certificate.location": _OWN.format("kafka.ssl_certificate_location"),
    "ssl.key.location": _OWN.format("kafka.ssl_key_location"),
    "log.queue": "kycstream serves librdkafka's log lines through its structured logger, from the log queue",
}


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "kycstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="or a file holding it (KAFKA_SASL_PASSWORD_FILE)")
    sasl_oauthbearer_method: Literal["oidc", "msk_iam"] | None = Field(
        None,
        description="OAUTHBEARER tokens: oidc (librdkafka fetches them with client credentials from "
        "sasl_oauthbearer_token_endpoint_url) or msk_iam (AWS's signer, the kycstream[msk] extra)",
    )
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: SecretStr | None = None
    sasl_oauthbearer_client_secret_file: Path | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = Field(None, description="the identity provider's token endpoint")
    sasl_oauthbearer_scope: str | None = None
    sasl_oauthbearer_extensions: str | None = Field(
        None, description="Confluent Cloud: logicalCluster=lkc-…,identityPoolId=pool-…"
    )
    aws_region: str | None = Field(None, description="msk_iam: the cluster's region (default: $AWS_REGION)")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = Field(None, description="when ssl_key_location is an encrypted key")
    ssl_key_password_file: Path | None = None
    schema_registry_url: str | None = None
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password")
    schema_registry_basic_auth_file: Path | None = None
    schema_registry_bearer_token: SecretStr | None = Field(None, description="a static bearer token")
    schema_registry_bearer_token_file: Path | None = None
    schema_registry_oauth_token_endpoint_url: str | None = Field(
        None, description="or bearer tokens fetched with OAuth client credentials from this endpoint"
    )
    schema_registry_oauth_client_id: str | None = None
    schema_registry_oauth_client_secret: SecretStr | None = None
    schema_registry_oauth_client_secret_file: Path | None = None
    schema_registry_oauth_scope: str = ""
    schema_registry_logical_cluster: str = Field("", description="Confluent Cloud with bearer auth: lsrc-…")
    schema_registry_identity_pool_id: str | None = Field(None, description="Confluent Cloud with OAuth: pool-…")
    schema_registry_ssl_ca_location: str | None = None
    schema_registry_ssl_certificate_location: str | None = None
    schema_registry_ssl_key_location: str | None = None
    schema_registry_auto_register: bool = Field(
        True, description="register a schema on first write; off in production, with `kycstream schemas register`"
    )
    schema_registry_use_latest_version: bool = Field(
        False, description="write with the subject's latest version instead of looking up kycstream's schema"
    )
    schema_registry_subject_name_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic", description="subjects <topic>-value, <record name>, or <topic>-<record name>"
    )
    schema_registry_internal_topics: Literal["registry", "single_object"] = Field(
        "registry", description="the dedup, state and expected topics through the registry, or registry-free"
    )
    # Any other librdkafka property (e.g. {"socket.keepalive.enable": "true"}): it overrides kycstream's
    # own value, and goes only to the clients it applies to (a consumer property to consumers). The
    # properties of EXTRA_REFUSED cannot be changed here: refused at start, with the reason.
    extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _changeable(cls, value: dict[str, str]) -> dict[str, str]:
        refused = [f"{key}: {EXTRA_REFUSED[key]}" for key in value if key in EXTRA_REFUSED]
        if refused:
            raise ValueError("cannot be set in kafka.extra: " + "; ".join(refused))
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, value: str) -> str:
        for host in value.split(","):
            if ":" not in host.strip():
                raise ValueError(f"{host.strip()!r} needs host:port, e.g. 127.0.0.1:9092")
        return value

    @field_validator("sasl_oauthbearer_token_endpoint_url", "schema_registry_oauth_token_endpoint_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else secure_url(value)

    @model_validator(mode="after")
    def _auth_complete(self) -> Self:
        problems = _secret_problems(self) + _sasl_problems(self) + _ssl_problems(self) + _registry_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def msk_region(self) -> str | None:
        return self.aws_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _secret_problems(k: KafkaSettings) -> list[str]:
    problems = []
    for name in KAFKA_SECRETS:
        value, file = getattr(k, name), getattr(k, f"{name}_file")
        if value is not None and file is not None:
            problems.append(f"{name} and {name}_file are both set: give one of them")
        elif file is not None:
            try:
                if not read_lines(file):
                    problems.append(f"{name}_file {file} holds no secret (its first line is the secret)")
            except OSError as exc:
                problems.append(f"{name}_file {file}: {exc.strerror}: mount it or fix the path")
    return problems


def _given(k: KafkaSettings, name: str) -> bool:
    return getattr(k, name) is not None or getattr(k, f"{name}_file", None) is not None


def _sasl_problems(k: KafkaSettings) -> list[str]:
    sasl = k.security_protocol.startswith("SASL_")
    if k.sasl_mechanism and not sasl:
        return [f"sasl_mechanism {k.sasl_mechanism} needs security_protocol SASL_SSL (not {k.security_protocol})"]
    if sasl and not k.sasl_mechanism:
        return [f"security_protocol {k.security_protocol} needs sasl_mechanism: PLAIN, SCRAM-SHA-512 or OAUTHBEARER"]
    method = k.sasl_oauthbearer_method
    if k.sasl_mechanism == "OAUTHBEARER" and method is None:
        return [
            "sasl_mechanism OAUTHBEARER needs sasl_oauthbearer_method: oidc (client credentials from your identity "
            "provider: Confluent Cloud, Strimzi with OAuth) or msk_iam (Amazon MSK with IAM)"
        ]
    if method is not None and k.sasl_mechanism != "OAUTHBEARER":
        return [f"sasl_oauthbearer_method {method} needs sasl_mechanism OAUTHBEARER (not {k.sasl_mechanism})"]
    if method == "oidc":
        wanted = {
            "sasl_oauthbearer_token_endpoint_url": "the identity provider's token endpoint",
            "sasl_oauthbearer_client_id": "the client id",
            "sasl_oauthbearer_client_secret": "sasl_oauthbearer_client_secret_file, a file holding the client secret",
        }
        missing = [f"{name} ({what})" for name, what in wanted.items() if not _given(k, name)]
        return [f"sasl_oauthbearer_method oidc needs {', '.join(missing)}"] if missing else []
    if method == "msk_iam":
        problems = []
        if k.security_protocol != "SASL_SSL":
            problems.append("sasl_oauthbearer_method msk_iam needs security_protocol SASL_SSL (MSK's IAM port, 9098)")
        if not k.msk_region():
            problems.append("sasl_oauthbearer_method msk_iam needs the cluster's region: aws_region or $AWS_REGION")
        if importlib.util.find_spec(MSK_SIGNER) is None:
            problems.append(
                "sasl_oauthbearer_method msk_iam needs AWS's signer, which is not installed: "
                "pip install 'kycstream[msk]'"
            )
        return problems
    return []


def _ssl_problems(k: KafkaSettings) -> list[str]:
    problems = []
    if _given(k, "ssl_key_password") and not k.ssl_key_location:
        problems.append("ssl_key_password decrypts ssl_key_location: set that too (the client's private key)")
    if bool(k.ssl_certificate_location) != bool(k.ssl_key_location):
        problems.append("mTLS needs ssl_certificate_location and ssl_key_location both (the client's certificate, key)")
    if (k.ssl_certificate_location or k.ssl_ca_location) and not k.security_protocol.endswith("SSL"):
        problems.append(f"ssl_* files are set but security_protocol is {k.security_protocol}: use SSL or SASL_SSL")
    return problems


def _registry_problems(k: KafkaSettings) -> list[str]:
    ways = [
        name
        for name, given in (
            ("schema_registry_basic_auth", _given(k, "schema_registry_basic_auth")),
            ("schema_registry_bearer_token", _given(k, "schema_registry_bearer_token")),
            ("schema_registry_oauth_token_endpoint_url", k.schema_registry_oauth_token_endpoint_url is not None),
        )
        if given
    ]
    problems = []
    if len(ways) > 1:
        problems.append(f"{' and '.join(ways)}: the schema registry takes one way to authenticate, give one")
    if k.schema_registry_oauth_token_endpoint_url is not None:
        missing = [
            name
            for name in ("schema_registry_oauth_client_id", "schema_registry_oauth_client_secret")
            if not _given(k, name)
        ]
        if missing:
            problems.append(f"schema_registry_oauth_token_endpoint_url needs {' and '.join(missing)} (or its _file)")
    if k.schema_registry_use_latest_version and k.schema_registry_auto_register:
        problems.append(
            "schema_registry_use_latest_version writes with what the registry holds: set schema_registry_auto_register "
            "false (and register with `kycstream schemas register`)"
        )
    if bool(k.schema_registry_ssl_certificate_location) != bool(k.schema_registry_ssl_key_location):
        problems.append("schema_registry_ssl_certificate_location and schema_registry_ssl_key_location go together")
    return problems


_TOPIC_NAMES = ("raw", "events", "state", "dedup", "dlq", "expected")  # processors.kafka.topics.ROLES


class TopicSettings(Section):
    # Prepended to each of the six names below, e.g. "prod." (deploy/components/topic-prefix renames
    # the Strimzi topics and ACLs alike). A name that already starts with it is kept as it is.
    prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", description='e.g. "prod.": prepended to every topic name')
    raw: str = "kyc.webhooks.raw.v1"
    events: str = "kyc.verification.events.v1"
    state: str = "kyc.verification.state.v1"
    dedup: str = "kyc.dedup.v1"
    dlq: str = "kyc.webhooks.dlq.v1"
    expected: str = "kyc.verification.expected.v1"
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(
        3, ge=1, description="1 on a single-broker cluster (the embedded broker); `topics create` refuses 1 on more"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="default: 2 when replication_factor is 3 or more, else the broker's default"
    )
    raw_retention_ms: int = Field(30 * DAY_MS, ge=-1)
    dlq_retention_ms: int = Field(30 * DAY_MS, ge=-1)
    events_retention_ms: int = Field(30 * DAY_MS, ge=-1)

    @model_validator(mode="before")
    @classmethod
    def _prefixed(cls, data: Any) -> Any:
        """Every topic name with the prefix; idempotent, so a copy validated again is unchanged."""
        if not isinstance(data, dict) or not data.get("prefix"):
            return data
        prefix = str(data["prefix"])
        names = {role: str(data.get(role, cls.model_fields[role].default)) for role in _TOPIC_NAMES}
        return data | {role: name if name.startswith(prefix) else prefix + name for role, name in names.items()}

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Self:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} is over replication_factor "
                f"{self.replication_factor}: every acks=all write would fail; set it at most {self.replication_factor}"
            )
        return self

    @property
    def insync_replicas(self) -> int | None:
        """min.insync.replicas for the topics: 2 of 3 replicas by default (one broker may be down)."""
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return 2 if self.replication_factor >= 3 else None


class Settings(BaseSettings):
    """Base of each role's settings: the sections every role shares."""

    model_config = SettingsConfigDict(env_prefix="KYCSTREAM_", env_nested_delimiter="__", extra="ignore", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file = InitSettingsSource(settings_cls, init_kwargs=_config_data.get() or {})
        return init_settings, env_settings, _PlainKafkaEnv(settings_cls), file

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        return load_settings(cls, path, **overrides)

    def with_overrides(self, **sections: dict[str, Any]) -> Self:
        """A copy with some fields of some sections replaced (command-line flags), validated again.

        Each section is validated on its own: validating the whole settings object would read
        the environment again, and the command line must win over it.
        """
        updates = {}
        for name, fields in sections.items():
            current = getattr(self, name)
            try:
                updates[name] = type(current).model_validate({**current.model_dump(), **fields})
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc, "the command line", prefix=(name,))) from exc
        return self.model_copy(update=updates)


S = TypeVar("S", bound=Settings)

_config_data: ContextVar[dict[str, Any] | None] = ContextVar("kycstream_config_data", default=None)


class _PlainKafkaEnv(PydanticBaseSettingsSource):
    """KAFKA_ENV's variables (or their `_FILE` forms) as the kafka section's fields."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads all of them at once

    def __call__(self) -> dict[str, Any]:
        kafka = {field: value for var, field in KAFKA_ENV.items() if (value := _plain_env(var))}
        return {"kafka": kafka} if kafka else {}


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        return {}
    file = Path(chosen)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist (from --config or ${CONFIG_ENV})")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of sections (kafka:, topics:, ...)")
    return data


def load_settings(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
    """The settings from the file at `path` (else $KYCSTREAM_CONFIG), the environment and `overrides`
    (highest), in the precedence above."""
    token = _config_data.set(read_config_file(path))
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path or os.environ.get(CONFIG_ENV))) from exc
    finally:
        _config_data.reset(token)


def _plain_env(var: str) -> str | None:
    """$VAR, else the content of the file named by $VAR_FILE (e.g. KAFKA_SASL_PASSWORD_FILE, a mounted
    Secret); read at start: a Kafka client keeps its connection's credentials."""
    if value := os.environ.get(var):
        return value
    if file := os.environ.get(f"{var}_FILE"):
        try:
            lines = read_lines(Path(file))
        except OSError as exc:
            raise ConfigError(f"{var}_FILE={file}: {exc.strerror}: mount it or fix the path") from exc
        return lines[0] if lines else None
    return None


def describe_validation_error(exc: ValidationError, path: str | Path | None, prefix: tuple[str, ...] = ()) -> str:
    where = f"in {path}" if path else "in the environment/defaults"
    lines = [f"invalid configuration {where}:"]
    for error in exc.errors():
        parts = (*prefix, *(str(part) for part in error["loc"]))
        loc = ".".join(parts)
        env = "KYCSTREAM_" + "__".join(part.upper() for part in parts)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {message} (set it in the file or with {env})")
    return "\n".join(lines)


class ReconcileSource(BaseModel):
    """The parts of a `sources:` entry the reconciler reads (the gateway reads the rest)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    provider: str
    poll: PollSettings | None = None

    @model_validator(mode="after")
    def _login_is_incodes(self) -> Self:
        if self.poll is not None and self.poll.executive_login is not None and self.provider != "incode":
            raise ValueError(
                f"poll.executive_login: {self.provider} has no executive login (Incode's only): give its API "
                "credential as poll.token, poll.token_file or poll.oauth2"
            )
        return self


# Kafka's default since 3.0, as cloud brokers recommend: a GC pause or a broker roll costs no rebalance.
_SESSION = "a member that dies without leaving the group holds its partitions this long"


class ReconcileSection(Section):
    group_id: str = "kycstream-reconciler"
    tick_s: float = Field(5.0, gt=0)
    max_polls_per_tick: int = Field(
        200, ge=1, description="a tick starts at most this many polls, oldest due first; the rest wait for the next"
    )
    max_tick_s: float = Field(
        30.0, gt=0, description="a poll of a tick not started within this is left for the next tick (still due)"
    )
    session_timeout_ms: int = Field(45_000, ge=1000, description=_SESSION)
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="the reconciler's groups (expectations, fetches): max.poll.interval.ms"
    )
    metrics_port: int | None = Field(9109, ge=0, le=65535, description="0 or null: no metrics server")
    liveness_timeout_s: float = Field(
        600.0, gt=0, description="/livez answers 503 when the run loop has not gone round for this long"
    )
    state_store: Literal["memory", "rocksdb"] = Field(
        "memory",
        description="the state table the reconciler reads by key: memory holds all of it; rocksdb keeps it on "
        "disk under state_dir, memory bounded by the two sizes below, a restart reads only the tail",
    )
    state_dir: Path = Path("/tmp/kycstream")
    store_block_cache_mb: int = Field(16, ge=1, description="rocksdb state_store: its block cache (reads)")
    store_write_buffer_mb: int = Field(16, ge=1, description="rocksdb state_store: its memtables, in that cache")

    @model_validator(mode="after")
    def _poll_interval_holds_a_session(self) -> Self:
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError(
                f"max_poll_interval_ms: {self.max_poll_interval_ms} is below session_timeout_ms "
                f"({self.session_timeout_ms}); Kafka needs it at least as long: raise it or lower session_timeout_ms"
            )
        return self


class ReconcileSettings(Settings):
    reconcile: ReconcileSection = ReconcileSection()
    sources: dict[str, ReconcileSource] = Field(default_factory=dict)


class ProcessorSection(Section):
    group_id: str = "kycstream-normalizer"
    batch_size: int = Field(500, ge=1, le=100_000)
    poll_timeout_s: float = Field(0.05, gt=0, description="how long a batch waits to fill: latency vs batching")
    session_timeout_ms: int = Field(45_000, ge=1000, description=_SESSION)
    linger_ms: float = Field(5.0, ge=0)
    flush_timeout_s: float = Field(30.0, gt=0)
    delivery_timeout_s: float = Field(
        120.0,
        gt=0,
        le=240,
        description="each output is acknowledged or failed for good within this (message.timeout.ms); a "
        "batch waits for all its outputs' reports before it is redone, under the consumer's 300 s poll limit",
    )
    retry_backoff_s: float = Field(1.0, ge=0)
    metrics_port: int | None = Field(9108, ge=0, le=65535, description="0 or null: no metrics server")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transactional_id: str | None = Field(None, description="exactly_once: stable per instance (default: group-host)")
    dedup_window_s: int = Field(7 * 24 * 3600, ge=60)
    dedup_store: Literal["memory", "sqlite", "rocksdb"] = Field(
        "memory",
        description="memory: rebuilt from the changelog on every assignment (fastest per event); rocksdb: "
        "on disk under state_dir, a restart reads only the changelog's tail (docs/operations.md#stores)",
    )
    state_store: Literal["memory", "rocksdb"] = Field(
        "memory", description="where the verifications' states live, as dedup_store (rocksdb: on disk)"
    )
    state_dir: Path = Path("/tmp/kycstream")
    store_block_cache_mb: int = Field(
        64, ge=1, description="rocksdb stores: the block cache all partitions of the process share (reads)"
    )
    store_write_buffer_mb: int = Field(
        32, ge=1, description="rocksdb stores: all memtables of the process, charged to the block cache"
    )
    expiry_interval_s: float = Field(60.0, gt=0)
    restore_timeout_s: float = Field(
        240.0, gt=0, description="a whole restore; below the consumer's max.poll.interval.ms (checked at start)"
    )
    liveness_timeout_s: float | None = Field(
        None,
        gt=0,
        description="/livez answers 503 when the run loop has not gone round for this long (default: the "
        "longest legitimate wait, a restore or a batch's delivery and flush timeouts, plus 60 s)",
    )


class ProcessorSettings(Settings):
    processor: ProcessorSection = ProcessorSection()
