"""Each dead letter's text names the command that re-drives it: followed literally (the command
run through the CLI entry point, against the embedded broker), it sends the record back."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from gateway.settings import GatewaySettings
from processors.cli import app
from processors.kafka.serde import Codec
from processors.model import Expectation
from processors.reconcile.standin import IncodeStandIn
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    latest_states,
    processing,
    processor_env,
    produce_raw,
    raw_delivery,
    read,
    serving_app,
    unique,
    wait_until,
)
from tests.integration.test_fetch import _notify, fetching

pytestmark = pytest.mark.broker
_COMMAND = re.compile(r"`(kycstream [^`]+)`")


@pytest.fixture
def cli_env(kafka: KafkaSettings, topic_settings: TopicSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`kycstream` commands' configuration as an operator's shell would have it for these topics."""
    for name, value in processor_env(kafka, topic_settings, KYCSTREAM_PROCESSOR__GROUP_ID=unique("ops")).items():
        monkeypatch.setenv(name, value)
    yield


def follow(detail: str) -> str:
    """Run the command a letter's text names, as written; its output."""
    found = _COMMAND.findall(detail)
    assert found, f"no command in {detail!r}"
    argv = shlex.split(found[-1])
    assert argv[0] == "kycstream"
    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_normalizer_letter_is_redriven_by_its_text_after_the_fix(
    cli_env: None,
    topic_settings: TopicSettings,
    kafka: KafkaSettings,
    codec: Codec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processors.providers import esign

    body = json.dumps({"submissionId": unique("rd"), "status": "VERIFIED", "result": "VALID"}).encode()
    produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", body)], codec)
    group = unique("proc")
    with processing(kafka, topic_settings, group_id=group):
        (letter,) = read(kafka, topic_settings.dlq, codec, "DeadLetter", at_least=1)
    assert letter["reason"] == "unknown_status"
    assert "add the mapping" in letter["detail"]

    original = esign._status  # the fix: a newer normalizer knows the word
    monkeypatch.setattr(esign, "_status", lambda s, r, c: original("COMPLETED" if s == "VERIFIED" else s, r, c))
    assert "1 dead letters were redriven" in follow(letter["detail"])
    with processing(kafka, topic_settings, group_id=group):
        wait_until(
            lambda: any(
                e["status"] == "APPROVED" for e in read(kafka, topic_settings.events, codec, "VerificationEvent")
            ),
            30,
            "the redriven delivery's event",
        )


def test_a_fetch_letter_is_redriven_by_its_text_after_the_credential_fix(
    gateway: tuple[str, GatewaySettings], cli_env: None, kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    standin = IncodeStandIn(admin_token="the-real-token")
    vid = unique("refetch")
    _notify(url, vid)
    group, rec_group = unique("proc"), unique("rec")
    with serving_app(standin.app()) as api_url, processing(kafka, settings.topics, group_id=group):
        with fetching(kafka, settings.topics, api_url, rec_group, admin_token="a-wrong-token"):
            (letter,) = read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=1, timeout=60)
        assert letter["reason"] == "fetch_unauthorized"
        assert "restart the reconciler" in letter["detail"]
        # Fixed: the reconciler restarted with the right credential; then the letter's command.
        with fetching(kafka, settings.topics, api_url, rec_group, admin_token="the-real-token"):
            assert "1 fetch letters' notices were sent back" in follow(letter["detail"])
            wait_until(
                lambda: (
                    latest_states(kafka, settings.topics.state, codec).get(f"incode:{vid}", {}).get("status")
                    == "APPROVED"
                ),
                60,
                "the re-queued fetch decided the verification",
            )
    assert standin.calls[vid] == 2, "the refused fetch, then the re-queued one (the restart fetched nothing else)"
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert [e["provider_status"] for e in events if e["verification_id"] == vid].count("SCORE_OK") == 1


def test_a_poll_letter_is_redriven_by_its_text(
    cli_env: None, topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    """`kycstream redrive` posts the expectation again, with a fresh give-up window."""
    from confluent_kafka import Producer

    from processors.avro.records import expectation_to_record
    from processors.kafka import config
    from processors.kafka.producer import produce_dead_letter
    from processors.model import DeadLetter
    from processors.remedies import explain

    started = datetime.now(UTC) - timedelta(days=2)
    expectation = Expectation("xendit", "xendit", unique("acct"), started, {}, 600)
    value = codec.encode("Expectation", expectation_to_record(expectation))
    letter = DeadLetter(
        reason="poll_expired",
        detail=explain("poll_expired", "no final result from xendit after 9 polls; giving up"),
        failed_at=datetime.now(UTC),
        source_topic=topic_settings.expected,
        partition=0,
        offset=3,
        original_value=value,
        original_key=expectation.key.encode(),
        source="xendit",
        provider="xendit",
    )
    producer = Producer(config.producer(kafka))
    produce_dead_letter(producer, codec, topic_settings.dlq, letter, letter.original_key)
    assert producer.flush(10) == 0

    assert "1 poll letters' expectations were posted again" in follow(letter.detail)
    (posted,) = read(kafka, topic_settings.expected, codec, "Expectation", at_least=1)
    assert posted["_key"] == expectation.key.encode()
    assert posted["verification_id"] == expectation.verification_id
    assert posted["expected_at"] > datetime.now(UTC) - timedelta(minutes=5), "a fresh give-up window"
    assert "0 poll letters' expectations were posted again" in follow(letter.detail), "once"
