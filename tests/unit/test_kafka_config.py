"""processors.kafka.config and the settings it reads: what each client is given, what kafka.extra may
change, and the topics' replication as a cluster can hold it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from processors import logs
from processors.errors import ConfigError
from processors.kafka import config, topics
from processors.settings import KafkaSettings, ProcessorSettings, ReconcileSettings, TopicSettings


def _load(tmp_path: Path, data: dict[str, object]) -> ProcessorSettings:
    path = tmp_path / "kycstream.yaml"
    path.write_text(yaml.safe_dump(data))
    return ProcessorSettings.load(path)


def test_extra_overrides_kycstreams_own_values_for_the_clients_it_applies_to() -> None:
    extra = {
        "compression.type": "zstd",
        "message.timeout.ms": "2000",
        "fetch.wait.max.ms": "5",
        "socket.keepalive.enable": "true",
    }
    k = KafkaSettings(extra=extra)
    producer = config.producer(k, **{"message.timeout.ms": 9000})
    consumer = config.consumer(k, "g", **{"fetch.wait.max.ms": 10})
    admin = config.admin(k)
    assert (producer["compression.type"], producer["message.timeout.ms"]) == ("zstd", "2000")
    assert consumer["fetch.wait.max.ms"] == "5"
    assert "fetch.wait.max.ms" not in producer and "fetch.wait.max.ms" not in admin
    assert "compression.type" not in consumer and "message.timeout.ms" not in consumer
    assert "message.timeout.ms" not in admin and "compression.type" not in admin
    assert (
        producer["socket.keepalive.enable"] == consumer["socket.keepalive.enable"] == admin["socket.keepalive.enable"]
    )
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)


def test_each_client_logs_through_its_roles_logger() -> None:
    k = KafkaSettings()
    assert config.producer(k, role="gateway")["logger"] is logs.librdkafka("gateway")
    assert config.consumer(k, "g", role="processor")["logger"] is logs.librdkafka("processor")
    assert config.admin(k)["logger"].name == "kycstream.librdkafka.admin"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("acks", "acks=all"),
        ("enable.idempotence", "idempotent producer"),
        ("enable.auto.commit", "offsets move only after"),
        ("isolation.level", "read_committed"),
        ("session.timeout.ms", "processor.session_timeout_ms"),
        ("bootstrap.servers", "kafka.bootstrap_servers"),
    ],
)
def test_extra_refuses_what_it_cannot_change_with_the_reason(tmp_path: Path, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, {"kafka": {"extra": {key: "1", "socket.keepalive.enable": "true"}}})
    message = str(raised.value)
    assert "kafka.extra: cannot be set in kafka.extra" in message and f"{key}: " in message and reason in message
    assert "socket.keepalive.enable" not in message


def test_topics_default_to_three_replicas_two_in_sync() -> None:
    specs = topics.specs(TopicSettings())
    assert {(s.replication_factor, s.config["min.insync.replicas"]) for s in specs} == {(3, "2")}
    assert all("min.insync.replicas" not in s.config for s in topics.specs(TopicSettings(replication_factor=2)))
    single = topics.specs(TopicSettings(replication_factor=1))
    assert {(s.replication_factor, "min.insync.replicas" in s.config) for s in single} == {(1, False)}


def test_min_insync_over_the_replicas_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_insync_replicas 3 is over replication_factor 2"):
        _load(tmp_path, {"topics": {"replication_factor": 2, "min_insync_replicas": 3}})


def test_replication_as_the_cluster_can_hold_it() -> None:
    wanted = topics.specs(TopicSettings())
    single = topics.fit(wanted, brokers=1)
    assert {(s.replication_factor, "min.insync.replicas" in s.config) for s in single} == {(1, False)}
    assert topics.fit(wanted, brokers=3) == wanted
    with pytest.raises(ConfigError, match="replication_factor is 3 but the cluster has 2 brokers"):
        topics.fit(wanted, brokers=2)
    one = topics.specs(TopicSettings(replication_factor=1))
    with pytest.raises(ConfigError, match=r"replication_factor is 1 on a cluster of 3 brokers.*--allow-single-replica"):
        topics.fit(one, brokers=3)
    assert topics.fit(one, brokers=3, allow_single_replica=True) == one


def test_group_sessions_default_to_45_s() -> None:
    assert ProcessorSettings().processor.session_timeout_ms == 45_000
    assert ReconcileSettings().reconcile.session_timeout_ms == 45_000


@pytest.mark.parametrize(
    ("where", "url"),
    [
        ("base_url", "http://api.incode.example"),
        ("base_url", "http://10.0.0.7:8080"),
        ("base_url", "http://localhost.example.com"),
        ("oauth2.token_url", "http://auth.signicat.example/connect/token"),
    ],
)
def test_a_provider_url_in_clear_text_off_loopback_is_refused_with_its_path(
    tmp_path: Path, where: str, url: str
) -> None:
    poll: dict[str, object] = {"base_url": "https://api.example", "token": "t"}
    if where == "base_url":
        poll["base_url"] = url
    else:
        poll = {"base_url": "https://api.example", "oauth2": {"token_url": url, "client_id": "c", "client_secret": "s"}}
    path = tmp_path / "kycstream.yaml"
    path.write_text(yaml.safe_dump({"sources": {"idv": {"provider": "signicat", "poll": poll}}}))
    with pytest.raises(ConfigError) as raised:
        ReconcileSettings.load(path)
    message = str(raised.value)
    assert f"sources.idv.poll.{where}: " in message and "clear text" in message and "https://" in message


@pytest.mark.parametrize(
    "url", ["https://api.example", "http://127.0.0.1:8099", "http://[::1]:8099", "http://localhost"]
)
def test_https_and_loopback_stand_ins_are_accepted(url: str) -> None:
    settings = ReconcileSettings(sources={"idv": {"provider": "xendit", "poll": {"base_url": url, "token": "t"}}})
    assert settings.sources["idv"].poll is not None


def test_repeats_of_a_line_are_written_once_a_window_with_their_count() -> None:
    now = [0.0]
    repeats = logs.RepeatFilter(window_s=60, clock=lambda: now[0])
    fail, other = ("FAIL", "c#1", "connect refused"), ("FAIL", "c#2", "connect refused")
    assert repeats.admit(fail) == 0
    for _ in range(119):  # twice a second for a minute
        now[0] += 0.5
        assert repeats.admit(fail) is None
    assert repeats.admit(other) == 0, "another client's line is its own"
    now[0] += 0.5
    assert repeats.admit(fail) == 119
    assert repeats.admit(fail) is None
