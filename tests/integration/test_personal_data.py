"""The whole corpus through gateway and normalizer: no personal value of any input appears in a
non-raw record (events, state, dedup), in the metrics, or in any log line."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import generate_latest

from gateway.settings import GatewaySettings
from processors.kafka import reader
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests import cases
from tests.conftest import post, processing, read
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker


def test_personal_data_never_leaves_the_raw_and_dlq_topics(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, capfd: pytest.CaptureFixture[str]
) -> None:
    from processors import logs

    logs.configure("DEBUG", "json")  # every log line the roles can write, as in production
    try:
        _run_corpus(gateway, kafka, codec, capfd)
    finally:
        logs.configure("INFO", "console")


def _run_corpus(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, capfd: pytest.CaptureFixture[str]
) -> None:
    url, settings = gateway
    corpus = cases.load()
    personal = set().union(*(cases.personal_values(c.body) for c in corpus))
    assert len(personal) > 20, "the corpus must carry personal values for this test to mean anything"
    for case in corpus:
        source = settings.sources[case.provider]
        response = post(
            f"{url}/webhooks/{case.provider}", case.body, {**case.headers, **auth_headers(source, case.body)}
        )
        assert response.status_code == 200
    with processing(kafka, settings.topics) as normalizer:
        read(kafka, settings.topics.dlq, codec, "DeadLetter", at_least=sum(1 for c in corpus if c.dead_letter))
        events = read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1)
        metrics = generate_latest(normalizer.metrics.registry) + httpx.get(f"{url}/metrics").content
    assert events

    outputs: list[bytes] = [metrics]
    for topic in (settings.topics.events, settings.topics.state, settings.topics.dedup):
        for record in reader.read_all(kafka, topic):
            outputs += [record.key or b"", record.value or b""]
    logged = capfd.readouterr()
    outputs += [logged.out.encode(), logged.err.encode()]
    assert b"webhook" in outputs[-1] + outputs[-2], "the log lines were captured"

    leaks = {value for value in personal for blob in outputs if value.encode() in blob}
    assert not leaks
    raw = b"".join(r.value or b"" for r in reader.read_all(kafka, settings.topics.raw))
    assert all(value.encode() in raw for value in personal), "the raw topic keeps the deliveries whole"
