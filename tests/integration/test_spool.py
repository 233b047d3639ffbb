"""The spool through the real gateway (server.build: spool and forwarder), real HTTP and a broker
behind a TCP proxy that the tests cut: 200 while Kafka is away, everything forwarded once it is back."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.server import build
from gateway.settings import GatewaySettings, SourceSettings
from gateway.sink import KafkaRawSink
from gateway.spool.journal import Spool, Spooled
from processors.kafka import embedded, topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import DEV_SECRET, committed_to_end, processing, raw_delivery, read, unique, wait_until
from tests.credentials import auth_headers
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.broker


def _settings(kafka: KafkaSettings, names: TopicSettings, spool_dir: Path, **spool: Any) -> GatewaySettings:
    def source(provider: str, **extra: Any) -> SourceSettings:
        return SourceSettings.model_validate({"provider": provider, "auth": {"credentials": [DEV_SECRET]}, **extra})

    return GatewaySettings(
        kafka=kafka,
        topics=names,
        sources={
            "signicat": source("signicat", on_kafka_unavailable="spool"),  # Paper/Connect: one callback
            "readid": source("signicat"),  # refuse: ReadID must not get >= 500
            "xendit": source("xendit"),
        },
        gateway={
            "host": "127.0.0.1",
            "port": embedded.free_port(),
            "produce_timeout_s": 1,
            "spool_dir": str(spool_dir),
            "spool": {"drain_on_exit_s": 5, **spool},
        },
    )


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@contextmanager
def gateway(settings: GatewaySettings) -> Iterator[str]:
    """The gateway as `kycstream gateway` builds it, in a thread; its shutdown drains the spool."""
    config, _ = build(settings)
    server = _Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "the gateway started")
    try:
        yield f"http://127.0.0.1:{settings.gateway.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _signicat(pid: str) -> bytes:
    return json.dumps({"processId": pid, "dossierId": "d-1", "status": "accepted"}).encode()


def _post(url: str, source: str, settings: GatewaySettings, body: bytes) -> httpx.Response:
    headers = auth_headers(settings.sources[source], body)
    return httpx.post(f"{url}/webhooks/{source}", content=body, headers=headers, timeout=30)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_spooling_source_answers_200_while_kafka_is_cut_and_everything_lands_once(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, tmp_path: Path
) -> None:
    kafka, proxy = proxied
    names = TopicSettings(partitions=2)
    topics.create_all(kafka, names)
    settings = _settings(kafka, names, tmp_path / "spool")
    with gateway(settings) as url:
        before = _post(url, "signicat", settings, _signicat("p-before"))
        assert before.status_code == 200  # straight to Kafka, or spooled if Kafka took over 1 s
        proxy.cut()
        answers = [_post(url, "signicat", settings, _signicat(f"p-{i:02d}")) for i in range(20)]
        assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
        assert all(a.json()["spooled"] for a in answers)
        readid = _post(url, "readid", settings, _signicat("p-readid"))
        xendit = _post(url, "xendit", settings, b'{"data": {"id": "x-1", "kyc": {"status": "PASSED"}}}')
        assert (readid.status_code, readid.json()["error"]) == (429, "kafka_unavailable")
        assert xendit.status_code == 503 and xendit.headers["retry-after"]
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["spooling"] == ["signicat"], ready.text
        assert _metric(url, "kycstream_gateway_spool_records") >= 20
        proxy.restore()
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
        assert _metric(url, "kycstream_gateway_spool_forwarded_total") >= 20
        after = _post(url, "signicat", settings, _signicat("p-after"))
        assert after.status_code == 200  # spooled too while the gateway's producer reconnects

    raw = read(kafka, names.raw, codec, "RawDelivery")
    accepted = [before, *answers, after]
    assert Counter(r["request_id"] for r in raw) >= Counter(a.json()["request_id"] for a in accepted)
    group = unique("spool")
    with processing(kafka, names, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, names.raw), 60, "the raw topic processed")
    events = read(kafka, names.events, codec, "VerificationEvent")
    assert sorted(e["verification_id"] for e in events) == sorted(
        ["p-before", "p-after", *(f"p-{i:02d}" for i in range(20))]
    ), "every answered delivery is exactly one event"


def test_a_gateway_that_never_reached_kafka_starts_and_spools(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, tmp_path: Path
) -> None:
    kafka, proxy = proxied
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    proxy.cut()
    settings = _settings(kafka, names, tmp_path / "spool")
    with gateway(settings) as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        response = _post(url, "signicat", settings, _signicat("p-first"))
        assert response.status_code == 200 and response.json()["spooled"]
        proxy.restore()
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
    assert [r["request_id"] for r in read(kafka, names.raw, codec, "RawDelivery")] == [response.json()["request_id"]]


def test_a_full_spool_refuses_with_the_source_status_and_loses_nothing_it_holds(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, tmp_path: Path
) -> None:
    kafka, proxy = proxied
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    settings = _settings(kafka, names, tmp_path / "spool", max_bytes=1024 * 1024)
    big = json.dumps({"processId": "p", "status": "accepted", "pad": "x" * 300_000})
    proxy.cut()
    with gateway(settings) as url:
        statuses = [_post(url, "signicat", settings, big.replace('"p"', f'"p-{i}"').encode()) for i in range(5)]
        codes = [s.status_code for s in statuses]
        assert codes[:4] == [200] * 4 and codes[4] == 429, codes  # signicat's refusal (see its module)
        assert "max_bytes" in statuses[4].json()["detail"]
        proxy.restore()
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
    raw = read(kafka, names.raw, codec, "RawDelivery")
    assert sorted(r["request_id"] for r in raw) == sorted(s.json()["request_id"] for s in statuses[:4])


def test_a_damaged_spool_forwards_its_valid_records_and_says_what_was_lost(
    proxied: tuple[KafkaSettings, TcpProxy], codec: Codec, tmp_path: Path
) -> None:
    kafka, _ = proxied
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    spool_dir = tmp_path / "spool"
    sink = KafkaRawSink(kafka, names)
    deliveries = [raw_delivery("signicat", _signicat(f"p-{i}")) for i in range(3)]
    spool = Spool(spool_dir, 1 << 30, 3600).open()
    for d in deliveries:
        value, headers = sink.envelope(d)
        spool.append(Spooled(f"signicat:{d.request_id}".encode(), value, tuple(headers), 0.0))
    spool.close()
    sink.close(1)
    [segment] = spool_dir.glob("segment-*.spool")
    data = bytearray(segment.read_bytes())
    first = len(data) // 3
    data[first + 40] ^= 0x01  # one flipped bit in the second record
    segment.write_bytes(bytes(data[:-7]))  # and the third torn
    settings = _settings(kafka, names, spool_dir)
    with gateway(settings) as url:
        assert _metric(url, "kycstream_gateway_spool_damaged_bytes_total") > 0
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
    raw = read(kafka, names.raw, codec, "RawDelivery")
    assert [r["request_id"] for r in raw] == [deliveries[0].request_id]


def test_a_record_spooled_longer_than_the_dedup_window_is_forwarded_with_a_warning(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    names = TopicSettings(partitions=1)
    topics.create_all(kafka, names)
    spool_dir = tmp_path / "spool"
    sink = KafkaRawSink(kafka, names)
    old, new = (raw_delivery("signicat", _signicat(f"p-{i}")) for i in range(2))
    spool = Spool(spool_dir, 1 << 30, 3600).open()
    for delivery, spooled_at in ((old, time.time() - 8 * 24 * 3600), (new, time.time())):
        value, headers = sink.envelope(delivery)
        spool.append(Spooled(f"signicat:{delivery.request_id}".encode(), value, tuple(headers), spooled_at))
    spool.close()
    sink.close(1)
    settings = _settings(kafka, names, spool_dir)  # the default window: 7 days, as the processors'
    with gateway(settings) as url:
        wait_until(lambda: _metric(url, "kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
        assert _metric(url, "kycstream_gateway_spool_forwarded_past_dedup_window_total") == 1
    raw = read(kafka, names.raw, codec, "RawDelivery")
    assert [r["request_id"] for r in raw] == [old.request_id, new.request_id], "forwarded all the same, in order"
