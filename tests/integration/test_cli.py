"""The CLI against the real broker: broker, topics create, tail."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from gateway.settings import GatewaySettings
from processors.kafka import embedded, topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.conftest import post, processing, read, unique

pytestmark = pytest.mark.broker
KYCSTREAM = [sys.executable, "-m", "processors.cli"]


def _env(kafka: KafkaSettings, **extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, **extra}


def test_broker_refuses_a_taken_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([*KYCSTREAM, "broker", "--port", str(port)], capture_output=True, timeout=30)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use".encode() in result.stderr


def test_topics_create_is_idempotent_and_sets_configs(kafka: KafkaSettings) -> None:
    tag = unique("cli")
    env = _env(kafka, **{f"KYCSTREAM_TOPICS__{r.upper()}": f"{tag}.{r}" for r in topics.ROLES})
    first = subprocess.run(
        [*KYCSTREAM, "topics", "create", "--partitions", "2"], env=env, capture_output=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().count("created") == len(topics.ROLES)
    again = subprocess.run([*KYCSTREAM, "topics", "create"], env=env, capture_output=True, timeout=60)
    assert again.returncode == 0 and again.stdout.decode().count("exists") == len(topics.ROLES)

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[f"{tag}.raw"].partitions) == 2
    policy = {}
    for role in ("state", "dedup", "expected", "raw"):
        (future,) = admin.describe_configs([ConfigResource("topic", f"{tag}.{role}")]).values()
        policy[role] = future.result()["cleanup.policy"].value
    assert policy == {"state": "compact", "dedup": "compact", "expected": "compact", "raw": "delete"}


def _three_events(url: str, settings: GatewaySettings, kafka: KafkaSettings, codec: Codec) -> None:
    """tail-0, tail-1, tail-2 through the gateway and a processor, one at a time: each event is in the
    events topic before the next is posted, so their timestamps are in that order."""
    body = b'{"submissionId": "tail-%d", "status": "COMPLETED", "result": "VALID"}'
    with processing(kafka, settings.topics):
        for i in range(3):
            assert post(f"{url}/webhooks/esign", body % i, {"authorization": "Bearer dev-secret"}).status_code == 200
            read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=i + 1)


def test_tail_count_prints_the_last_events_as_json(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    _three_events(url, settings, kafka, codec)
    result = subprocess.run(
        [*KYCSTREAM, "tail", "--topic", "events", "--count", "2", "--timeout", "30"],
        env=_env(kafka, KYCSTREAM_TOPICS__EVENTS=settings.topics.events),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["verification_id"], line["status"]) for line in lines] == [
        ("tail-1", "APPROVED"),
        ("tail-2", "APPROVED"),
    ], "the last two, oldest first"


def test_tail_from_beginning_prints_every_event_as_json(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    _three_events(url, settings, kafka, codec)
    everything = subprocess.run(
        [*KYCSTREAM, "tail", "--topic", settings.topics.events, "--from-beginning", "--timeout", "3"],
        env=_env(kafka),
        capture_output=True,
        timeout=60,
    )
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert {line["status"] for line in lines} == {"APPROVED"}
    assert sorted(json.loads(line)["verification_id"] for line in everything.stdout.splitlines()) == [
        "tail-0",
        "tail-1",
        "tail-2",
    ]


def test_embedded_broker_start_and_stop() -> None:
    running = embedded.start("127.0.0.1", embedded.free_port())
    assert running.alive()
    running.stop()
    assert not running.alive()


def test_every_command_finds_the_config_as_make_run_does(kafka: KafkaSettings, tmp_path: object) -> None:
    """--config, else $KYCSTREAM_CONFIG, else deploy/kycstream.dev.yaml from the project; said first."""
    from pathlib import Path

    repo, elsewhere = Path(__file__).parents[2], Path(str(tmp_path))
    own = elsewhere / "own.yaml"
    own.write_text("log_format: json\n")
    topic = unique("absent")
    clean = {k: v for k, v in _env(kafka).items() if k != "KYCSTREAM_CONFIG"}

    def first_line(cwd: Path, *args: str, **env: str) -> str:
        result = subprocess.run(
            [*KYCSTREAM, "tail", "--topic", topic, *args],
            env={**clean, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and f"topic {topic} does not exist" in result.stderr, result.stderr
        return result.stderr.splitlines()[0]

    assert first_line(repo) == "config: deploy/kycstream.dev.yaml"
    assert first_line(repo, KYCSTREAM_CONFIG=str(own)) == f"config: {own}"
    assert first_line(repo, "--config", str(own), KYCSTREAM_CONFIG="nowhere.yaml") == f"config: {own}"
    assert first_line(elsewhere) == "config: none (defaults and environment)"


def test_tail_decodes_any_topic_of_kycstream_records_and_names_what_else_it_found(
    kafka: KafkaSettings, codec: Codec
) -> None:
    from confluent_kafka import Producer

    from tests.conftest import produce_raw, raw_delivery

    copy, foreign = unique("copy.raw"), unique("foreign")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.create_topics([NewTopic(copy, 1), NewTopic(foreign, 1)]).values():
        future.result()
    bodies = [b'{"submissionId": "k-%d", "status": "COMPLETED", "result": "VALID"}' % i for i in range(3)]
    produce_raw(kafka, copy, [raw_delivery("esign", body) for body in bodies], codec)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    producer.produce(foreign, value=b'{"hello": "world"}')
    assert producer.flush(10) == 0
    env = _env(kafka)

    every = subprocess.run(
        [*KYCSTREAM, "tail", "--topic", copy, "--from-beginning", "--timeout", "2"], env=env, capture_output=True
    )
    assert [json.loads(line)["body"] for line in every.stdout.splitlines()] == [b.decode() for b in bodies]
    one = subprocess.run(
        [*KYCSTREAM, "tail", "--topic", copy, "--count", "1", "--key", "esign:k-1", "--timeout", "2"],
        env=env,
        capture_output=True,
    )
    assert [json.loads(line)["body"] for line in one.stdout.splitlines()] == [bodies[1].decode()]

    refused = subprocess.run(
        [*KYCSTREAM, "tail", "--topic", foreign, "--from-beginning", "--timeout", "2"], env=env, capture_output=True
    )
    assert refused.returncode == 2 and refused.stdout == b""
    assert f"{foreign} does not hold kycstream records: its record at partition 0 offset 0 is JSON text".encode() in (
        refused.stderr
    )
