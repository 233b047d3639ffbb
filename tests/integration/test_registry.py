"""The processor with a governed registry (auto-registration off), on the embedded broker and a
registry stand-in over HTTP: events carry the ids the registry holds, and without a subject the
processor refuses to start, saying which and how to register it."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import pytest

from processors.errors import ConfigError
from processors.kafka import config, reader, registry
from processors.kafka.serde import Codec
from processors.normalizer.runner import Normalizer
from processors.settings import KafkaSettings, ProcessorSection, ProcessorSettings, TopicSettings
from tests.conftest import processing, produce_raw, raw_delivery, serving_app, unique, wait_until
from tests.registry import Registry

pytestmark = pytest.mark.broker

USER = ("kycstream-processor", "registry-password")


def governed(kafka: KafkaSettings, url: str, tmp_path: Path) -> KafkaSettings:
    (tmp_path / "user-info").write_text(":".join(USER) + "\n")
    registry_settings = {
        "schema_registry_url": url,
        "schema_registry_basic_auth_file": tmp_path / "user-info",
        "schema_registry_auto_register": False,
    }
    return KafkaSettings(**{**kafka.model_dump(), **registry_settings})


def register_all_but(codec: Codec, topics: TopicSettings, *left_out: str) -> None:
    for subject in registry.subjects(codec, registry.writes(topics)):
        if subject.name not in left_out:
            registry.register(codec, subject)


def _esign(submission: str) -> bytes:
    doc = {"submissionId": submission, "status": "COMPLETED", "result": "VALID", "processedAt": "2026-05-08T10:30:00Z"}
    return json.dumps(doc).encode()


def test_with_auto_register_off_events_and_states_carry_the_registered_ids(
    kafka: KafkaSettings, topic_settings: TopicSettings, tmp_path: Path
) -> None:
    standing = Registry(basic=USER)
    with serving_app(standing.app()) as url:
        k = governed(kafka, url, tmp_path)
        codec = Codec(config.schema_registry(k))
        register_all_but(codec, topic_settings)
        registered = len(standing.registrations())
        produce_raw(k, topic_settings.raw, [raw_delivery("esign", _esign(unique("sub")))], codec)
        with processing(k, topic_settings) as normalizer:
            wait_until(lambda: reader.read_all(k, topic_settings.state), 30, "a state record")
        normalizer.engine.codec.close()
        events = reader.read_all(k, topic_settings.events)
        states = reader.read_all(k, topic_settings.state)
        for records, topic in ((events, topic_settings.events), (states, topic_settings.state)):
            assert len(records) == 1
            value = records[0].value or b""
            assert value[0] == 0 and int.from_bytes(value[1:5], "big") == standing.subjects[f"{topic}-value"][0]
        assert codec.decode("VerificationEvent", events[0].value or b"", topic_settings.events)["status"] == "APPROVED"
        codec.close()
    assert len(standing.registrations()) == registered, "the processor registered nothing itself"
    assert standing.refused == 0


def test_without_its_subject_the_processor_refuses_to_start(
    kafka: KafkaSettings, topic_settings: TopicSettings, tmp_path: Path
) -> None:
    standing = Registry(basic=USER)
    missing = f"{topic_settings.events}-value"
    with serving_app(standing.app()) as url:
        k = governed(kafka, url, tmp_path)
        with closing(Codec(config.schema_registry(k))) as codec:
            register_all_but(codec, topic_settings, missing)
        settings = ProcessorSettings(
            kafka=k, topics=topic_settings, processor=ProcessorSection(group_id=unique("g"), metrics_port=None)
        )
        with pytest.raises(ConfigError) as raised:
            Normalizer(settings)
    message = str(raised.value)
    assert f"subject {missing} (VerificationEvent on {topic_settings.events})" in message
    assert "register it with `kycstream schemas register`" in message
    assert f"{topic_settings.state}-value" not in message
