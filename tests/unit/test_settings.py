"""Settings: file + environment, validated at start with messages a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from processors.errors import ConfigError
from processors.settings import ProcessorSettings, TopicSettings

DEV_CONFIG = Path(__file__).parents[2] / "deploy" / "kycstream.dev.yaml"


def test_dev_config_is_valid_for_every_role() -> None:
    gateway = GatewaySettings.load(DEV_CONFIG)
    assert {"xendit", "esign"} <= set(gateway.sources)
    assert gateway.sources["xendit"].auth.header == "x-callback-token"
    assert gateway.sources["esign"].methods == ["POST", "PUT", "PATCH"]
    ProcessorSettings.load(DEV_CONFIG)


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("KYCSTREAM_GATEWAY__PORT", "9000")
    monkeypatch.setenv("KYCSTREAM_SOURCES__ESIGN__AUTH__CREDENTIALS", '["a", "b"]')
    settings = GatewaySettings.load(DEV_CONFIG)
    assert settings.kafka.bootstrap_servers == "kafka-0:9093,kafka-1:9093"
    assert settings.gateway.port == 9000
    assert [c.get_secret_value() for c in settings.sources["esign"].auth.credentials] == ["a", "b"]
    assert "a" not in repr(settings.sources["esign"].auth.credentials)


@pytest.mark.parametrize(
    ("environment", "flags", "expected"),
    [
        ({}, {}, "file:1"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "plain:1"}, {}, "plain:1"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "plain:1", "KYCSTREAM_KAFKA__BOOTSTRAP_SERVERS": "kycstream:1"},
            {},
            "kycstream:1",
        ),
        ({"KYCSTREAM_KAFKA__BOOTSTRAP_SERVERS": "kycstream:1"}, {"bootstrap_servers": "flag:1"}, "flag:1"),
    ],
)
def test_one_precedence_flags_then_kycstream_variables_then_plain_kafka_variables_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], flags: dict[str, str], expected: str
) -> None:
    """Merged field by field: a variable for one field keeps the file's other fields of that section."""
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "KYCSTREAM_KAFKA__BOOTSTRAP_SERVERS", "KYCSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environment.items():
        monkeypatch.setenv(var, value)
    config = _config(tmp_path, "kafka:\n  bootstrap_servers: file:1\n  client_id: from-the-file\n")
    settings = ProcessorSettings.load(config, **({"kafka": flags} if flags else {}))
    assert settings.kafka.bootstrap_servers == expected
    assert settings.kafka.client_id == "from-the-file"


def test_a_plain_kafka_variable_may_name_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    settings = ProcessorSettings.load(_config(tmp_path, "kafka:\n  sasl_username: u\n"))
    assert settings.kafka.sasl_password is not None and settings.kafka.sasl_password.get_secret_value() == "s3cret"
    assert settings.kafka.sasl_username == "u"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kycstream.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources:\n  x:\n    provider: nobody\n    auth: {credentials: [a]}\n", "unknown provider 'nobody'"),
        ("sources:\n  x:\n    provider: xendit\n", "needs at least one credential"),
        ("sources:\n  Bad Name:\n    provider: xendit\n    auth: {credentials: [a]}\n", "URL segment"),
        ("sources:\n  x:\n    provider: esign\n    methods: [GET]\n    auth: {credentials: [a]}\n", "methods"),
        (
            "sources:\n  x:\n    provider: xendit\n    allow_ips: [10.0.0.300]\n    auth: {credentials: [a]}\n",
            "not an IP address",
        ),
        ("sources:\n  x:\n    provider: esign\n    auth: {scheme: basic, credentials: [nocolon]}\n", "user:password"),
        ("gateway:\n  port: 70000\n", "gateway.port"),
        ("kafka:\n  bootstrap_servers: localhost\n", "host:port"),
        ("gateway: [1, 2]\n", "gateway"),
        ("- just a list\n", "mapping of sections"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_says_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        GatewaySettings.load(_config(tmp_path, text))
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        GatewaySettings.load(tmp_path / "absent.yaml")


def test_gateway_without_sources_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no webhook sources"):
        GatewaySettings().require_sources()


def test_topics_prefix_goes_before_every_topic_name_once() -> None:
    prefixed = TopicSettings(prefix="prod.", dlq="prod.kyc.webhooks.dlq.v2")
    assert (prefixed.raw, prefixed.expected) == ("prod.kyc.webhooks.raw.v1", "prod.kyc.verification.expected.v1")
    assert prefixed.dlq == "prod.kyc.webhooks.dlq.v2", "a name that already has it keeps it"
    assert TopicSettings.model_validate(prefixed.model_dump()) == prefixed, "validated again: unchanged"
    assert TopicSettings().raw == "kyc.webhooks.raw.v1"
    with pytest.raises(ValidationError):
        TopicSettings(prefix="prod /")
