"""Records Kafka can never hold are refused up front (413), from a spooling source and a refusing
one alike, and nothing is spooled; near-limit deliveries that do fit are dead-lettered whole, or
with a prefix and a reference when the dead letter could not hold them, and the processor goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.sink import KafkaRawSink
from processors.kafka import topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import committed_to_end, post, processing, read, unique, wait_until
from tests.credentials import auth_headers
from tests.integration.test_spool import _metric, _post, _settings, gateway
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.broker

TOO_LARGE = 1_000_500  # over librdkafka's default message.max.bytes (1,000,000) on its own


def _signicat(pid: str, size: int) -> bytes:
    body = json.dumps({"processId": pid, "status": "accepted", "pad": ""}).encode()
    return body.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(body)) + b'"')


def test_a_body_kafka_can_never_hold_is_refused_with_413_and_never_spooled(
    proxied: tuple[KafkaSettings, TcpProxy], tmp_path: Path
) -> None:
    kafka, proxy = proxied
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    spool_dir = tmp_path / "spool"
    settings = _settings(kafka, names, spool_dir)
    sink = KafkaRawSink(kafka, names)
    largest = sink.largest_body("signicat", "signicat")
    sink.close(1)
    assert 999_000 < largest < 1_000_000
    with gateway(settings) as url:
        answers = {}
        for kafka_up in (True, False):
            if not kafka_up:
                proxy.cut()
                spooled = _post(url, "signicat", settings, _signicat("p-cut", 100))
                assert spooled.status_code == 200 and spooled.json()["spooled"]  # the spool works meanwhile
            for source in ("signicat", "readid"):
                # Over the limit by its length alone (refused before the body is read), and just
                # under it but over once its key and headers are counted (measured whole).
                for size in (TOO_LARGE, largest):
                    answer = _post(url, source, settings, _signicat(f"p-{source}-{size}", size))
                    answers[(kafka_up, source, size)] = answer
        proxy.restore()
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
        forwarded = _metric(url, "kycstream_gateway_spool_forwarded_total")
    statuses = {k: a.status_code for k, a in answers.items()}
    assert set(statuses.values()) == {413}, {k: a.text[:300] for k, a in answers.items() if a.status_code != 413}
    details = [a.json()["detail"] for a in answers.values()]
    assert all("message.max.bytes" in d for d in details), details
    assert forwarded == 1, "only the small delivery sent during the cut was spooled"
    assert not list(spool_dir.glob("quarantine/*")), "nothing was spooled that Kafka then refused"


def test_near_limit_invalid_bodies_are_dead_lettered_and_the_processor_goes_on(
    gateway: tuple[str, object], topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    sink = KafkaRawSink(kafka, topic_settings)
    largest = sink.largest_body("xendit", "xendit")
    sink.close(1)
    headers = auth_headers(settings.sources["xendit"], b"")  # type: ignore[attr-defined]
    # 999,000 bytes: its dead letter holds it whole. The largest that fits with its headers: its
    # dead letter could not hold it (the letter's own fields on top), so it keeps a prefix.
    near = next(
        answer
        for size in range(largest, largest - 2000, -50)
        if (answer := post(f"{url}/webhooks/xendit", b"{" + b"x" * (size - 1), headers)).status_code != 413
    )
    assert near.status_code == 200, near.text
    whole = post(f"{url}/webhooks/xendit", b"{" + b"x" * 998_999, headers)
    assert whole.status_code == 200, whole.text
    small = json.dumps({"event": "account.verification", "data": {"id": "acct-after", "kyc": {"status": "PASSED"}}})
    assert post(f"{url}/webhooks/xendit", small.encode(), headers).status_code == 200

    group = unique("record-size")
    with processing(kafka, topic_settings, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 60, "the raw topic processed")
    letters = {d["request_id"]: d for d in read(kafka, topic_settings.dlq, codec, "DeadLetter", at_least=2)}
    cut, held = letters[near.json()["request_id"]], letters[whole.json()["request_id"]]
    assert held["original_size"] is None
    assert codec.decode("RawDelivery", held["original_value"])["body"] == b"{" + b"x" * 998_999
    assert cut["original_size"] > 999_000 and len(cut["original_value"]) < 20_000
    raw = {r["request_id"]: r for r in read(kafka, topic_settings.raw, codec, "RawDelivery")}
    assert len(raw[near.json()["request_id"]]["body"]) > 999_000, "the reference points at the whole record"
    events = read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=1)
    assert [e["verification_id"] for e in events] == ["acct-after"]
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200

    # redrive reads the cut letter's whole original back from the raw topic where it points: both
    # letters are judged on their whole bodies (still not JSON), neither as original_not_held.
    from processors.operate.replay import redrive
    from processors.settings import ProcessorSection, ProcessorSettings

    settings_ = ProcessorSettings(kafka=kafka, topics=topic_settings, processor=ProcessorSection(group_id=group))
    tally = redrive(settings_, dry_run=True)
    assert tally == {"still_failing:invalid_json": 2}, tally


def test_a_spooled_record_kafka_refuses_for_good_is_quarantined_and_the_rest_go_on(
    kafka: KafkaSettings, make_topics: Callable[..., TopicSettings], codec: Codec, tmp_path: Path
) -> None:
    """A spool left by a version that did not measure records: the oversized one is moved aside
    (counted, for an alert), the records before and after it are forwarded."""
    from gateway.spool.journal import Spool, Spooled
    from tests.conftest import raw_delivery

    names = make_topics(partitions=1)
    spool_dir = tmp_path / "spool"
    sink = KafkaRawSink(kafka, names)
    deliveries = [raw_delivery("signicat", _signicat(f"p-{i}", size)) for i, size in enumerate((100, TOO_LARGE, 100))]
    spool = Spool(spool_dir, 1 << 30, 3600).open()
    for d in deliveries:
        value, headers = sink.envelope(d)
        spool.append(Spooled(f"signicat:{d.request_id}".encode(), value, tuple(headers), 0.0))
    spool.close()
    sink.close(1)
    settings = _settings(kafka, names, spool_dir)
    with gateway(settings) as url:
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
        assert _metric(url, "kycstream_gateway_spool_quarantined_records") == 1
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        failures = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'kycstream_gateway_spool_forward_failures_total{error="MSG_SIZE_TOO_LARGE"} 1.0' in failures
    raw = read(kafka, names.raw, codec, "RawDelivery", at_least=2)
    assert [r["request_id"] for r in raw] == [deliveries[0].request_id, deliveries[2].request_id]
    assert len(list((spool_dir / "quarantine").glob("*.spool"))) == 1
