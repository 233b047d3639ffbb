"""Kafka clients as the roles make them (processors.kafka.config): librdkafka's own lines come out
as structured JSON with the client's role, repeats held back, and no client warns about its config."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from processors import logs
from processors.kafka import config
from processors.kafka.embedded import free_port
from processors.settings import ProcessorSettings
from tests.conftest import wait_until

DEV_CONFIG = Path(__file__).parents[2] / "deploy" / "kycstream.dev.yaml"
# Reconnect at once: librdkafka's FAIL line comes many times a second, not twice.
FAST_RECONNECT = {"reconnect.backoff.ms": "10", "reconnect.backoff.max.ms": "50"}


@pytest.fixture
def json_logs() -> Iterator[None]:
    logs.configure("INFO", "json")
    try:
        yield
    finally:
        logs.configure("INFO", "console")


def _role() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"  # a role logger of its own: its repeats start at none


def _served(client: Producer | Consumer | AdminClient, role: str, facility: str) -> Callable[[], int]:
    """Serves the client's queue (its log lines come out there), then says how many lines of
    `facility` the role's logger was handed (written or held back)."""
    (handler,) = logs.librdkafka(role).handlers
    held: dict[tuple[str, ...], tuple[float, int]] = handler.repeats.held  # type: ignore[attr-defined]

    def count() -> int:
        client.poll(0.05)
        return sum(1 + repeats for kind, (_, repeats) in held.items() if kind[0] == facility)

    return count


def _lines(err: str) -> list[dict[str, Any]]:
    raw = [line for line in err.splitlines() if line.startswith("%")]
    assert not raw, f"librdkafka wrote to stderr itself: {raw[:3]}"
    return [orjson.loads(line) for line in err.splitlines() if line.strip()]


def test_a_client_at_a_closed_port_logs_structured_lines_and_holds_repeats_back(
    json_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = ProcessorSettings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "extra": FAST_RECONNECT})
    role = _role()
    producer = Producer(config.producer(settings.kafka, role=role))
    failures = _served(producer, role, "FAIL")
    wait_until(lambda: failures() >= 5, 20, "five connection failures served")
    lines = [line for line in _lines(capfd.readouterr().err) if line.get("role") == role]
    assert len(lines) == 1, f"repeats of one line were written: {lines}"
    (line,) = lines
    assert (line["event"], line["level"], line["facility"]) == ("kafka_client", "error", "FAIL")
    assert "Connection refused" in line["message"] and line["client"].startswith("kycstream#producer")


def test_the_dev_configs_clients_start_without_a_configuration_warning(
    json_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    dev = ProcessorSettings.load(DEV_CONFIG)
    assert "fetch.wait.max.ms" in dev.kafka.extra, "the dev config has a consumer-only property in kafka.extra"
    closed = dev.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    roles = {kind: _role() for kind in ("producer", "consumer", "admin", "unfiltered")}
    producer = Producer(config.producer(closed, role=roles["producer"]))
    consumer = Consumer(config.consumer(closed, "kycstream-test", role=roles["consumer"]))
    admin = AdminClient(config.admin(closed, role=roles["admin"]))
    # What every producer did before: the whole of kafka.extra, consumer properties included.
    unfiltered = Producer(config.producer(closed, role=roles["unfiltered"]) | dict(closed.extra))
    try:
        # A client's warnings about its config are queued at its start, before its first failure.
        for client, kind in (
            (producer, "producer"),
            (consumer, "consumer"),
            (admin, "admin"),
            (unfiltered, "unfiltered"),
        ):
            wait_until(_served(client, roles[kind], "FAIL"), 20, f"the {kind}'s first failure served")
    finally:
        consumer.close()
    warned = {line["role"] for line in _lines(capfd.readouterr().err) if line.get("facility") == "CONFWARN"}
    assert warned == {roles["unfiltered"]}, "only the producer given consumer properties warns"
