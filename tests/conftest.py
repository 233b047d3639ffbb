"""Fixture factories: one broker per test session (per xdist worker), unique topics per test."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings, SourceSettings
from gateway.sink import KafkaRawSink
from processors.kafka import embedded, reader, topics
from processors.kafka.serde import Codec
from processors.normalizer.runner import Normalizer
from processors.providers import REGISTRY
from processors.reconcile.reconciler import Reconciler
from processors.reconcile.standin import IncodeStandIn
from processors.settings import KafkaSettings, ProcessorSection, ProcessorSettings, ReconcileSettings, TopicSettings
from tests.tcpproxy import TcpProxy

DEV_SECRET = "dev-secret"


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS if set, else an embedded broker on a free port."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    running = embedded.start("127.0.0.1", embedded.free_port())
    yield running.bootstrap_servers
    running.stop()


@pytest.fixture(scope="session")
def codec() -> Codec:
    return Codec()


@pytest.fixture
def proxied() -> Iterator[tuple[KafkaSettings, TcpProxy]]:
    """A broker of this test's own behind a TCP proxy the test can cut, restore or slow."""
    from tests.e2e import brokers

    broker = brokers.start_embedded()
    assert broker.proxy is not None
    try:
        yield KafkaSettings(bootstrap_servers=broker.bootstrap), broker.proxy
    finally:
        broker.close()


@pytest.fixture
def kafka(broker: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_topics(kafka: KafkaSettings) -> Callable[..., TopicSettings]:
    def make(partitions: int = 3) -> TopicSettings:
        tag = uuid.uuid4().hex[:10]
        names = {role: f"test.{tag}.{role}" for role in topics.ROLES}
        settings = TopicSettings(partitions=partitions, **names)
        topics.create_all(kafka, settings)
        return settings

    return make


@pytest.fixture
def topic_settings(make_topics: Callable[..., TopicSettings]) -> TopicSettings:
    return make_topics()


def dev_sources(**overrides: dict[str, Any]) -> dict[str, SourceSettings]:
    """One source per registered provider, named after it, with the provider's default auth."""
    sources = {}
    for name in REGISTRY:
        spec: dict[str, Any] = {"provider": name, "auth": {"credentials": [DEV_SECRET]}}
        spec.update(overrides.get(name, {}))
        sources[name] = SourceSettings.model_validate(spec)
    return sources


@pytest.fixture
def gateway_settings(kafka: KafkaSettings, topic_settings: TopicSettings) -> Callable[..., GatewaySettings]:
    def make(sources: dict[str, SourceSettings] | None = None, **server: Any) -> GatewaySettings:
        return GatewaySettings(
            kafka=kafka,
            topics=topic_settings,
            sources=sources or dev_sources(),
            gateway={"host": "127.0.0.1", "port": embedded.free_port(), **server},
        )

    return make


EXPECTATIONS_API_KEY = "expect-key"  # the gateway_with_expectations fixture's expectations API key


@pytest.fixture
def gateway_with_expectations(
    gateway_settings: Callable[..., GatewaySettings],
) -> Iterator[tuple[str, GatewaySettings]]:
    """A gateway on the test's broker with the expectations API on (key EXPECTATIONS_API_KEY)."""
    settings = gateway_settings(expectations_api_keys=[EXPECTATIONS_API_KEY])
    with serving(settings) as url:
        yield url, settings


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


@contextmanager
def serving_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = port or embedded.free_port()
    server = _ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, f"uvicorn started on port {port}", every=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def incode_api() -> Iterator[tuple[IncodeStandIn, str]]:
    """The local stand-in of Incode's API (its score answer depends on the interview id)."""
    standin = IncodeStandIn()
    with serving_app(standin.app()) as url:
        yield standin, url


@contextmanager
def serving(settings: GatewaySettings, sink: Any = None) -> Iterator[str]:
    own_sink = sink is None
    sink = sink or KafkaRawSink(
        settings.kafka, settings.topics, produce_timeout_s=settings.gateway.produce_timeout_s, linger_ms=1
    )
    try:
        with serving_app(create_app(settings, sink), settings.gateway.port) as url:
            yield url
    finally:
        if own_sink:
            sink.close(2)


@pytest.fixture
def gateway(gateway_settings: Callable[..., GatewaySettings]) -> Iterator[tuple[str, GatewaySettings]]:
    settings = gateway_settings()
    with serving(settings) as url:
        yield url, settings


# The embedded broker's first assignment of a group takes half the session timeout (3 s at 6 s, 23 s
# at the default 45 s), and a killed member hands its partitions over after the whole of it.
FAST_GROUP = {"session_timeout_ms": 6000}


# The processor's stores, as `processing(**store)` or `processor_env(**store_env(store))` take them:
# the key tests run with each kind (processor.dedup_store / state_store).
STORES: dict[str, dict[str, str]] = {
    "memory": {},
    "rocksdb": {"dedup_store": "rocksdb", "state_store": "rocksdb"},
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Processor settings choosing a store kind (rocksdb: under a directory of this test's own)."""
    kind = STORES[str(request.param)]
    return {**kind, "state_dir": tmp_path_factory.mktemp("stores")} if kind else {}


def store_env(store: dict[str, Any]) -> dict[str, str]:
    return {f"KYCSTREAM_PROCESSOR__{name.upper()}": str(value) for name, value in store.items()}


@contextmanager
def processing(kafka: KafkaSettings, topic_settings: TopicSettings, **section: Any) -> Iterator[Normalizer]:
    settings = ProcessorSettings(
        kafka=kafka,
        topics=topic_settings,
        processor=ProcessorSection(**{"group_id": unique("test-group"), "metrics_port": None, **FAST_GROUP, **section}),
    )
    normalizer = Normalizer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=normalizer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield normalizer
    finally:
        stop.set()
        thread.join(20)


@contextmanager
def reconciling(
    kafka: KafkaSettings,
    topic_settings: TopicSettings,
    sources: dict[str, Any],
    group: str | None = None,
    **section: Any,
) -> Iterator[Reconciler]:
    """`kycstream reconcile` in a thread (polls and fetches), ticking every 0.3 s; `section`: more
    `reconcile:` settings."""
    settings = ReconcileSettings(
        kafka=kafka,
        topics=topic_settings,
        sources=sources,
        reconcile={"group_id": group or unique("rec"), "tick_s": 0.3, "metrics_port": None, **FAST_GROUP, **section},
    )
    reconciler = Reconciler(settings)
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield reconciler
    finally:
        stop.set()
        thread.join(20)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str], every: float = 0.1
) -> None:
    """Wait for a fact; fail saying which fact never became true. `what` may be a function, called
    only on timeout, to say what was seen instead."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout:g}s, never: {what() if callable(what) else what}")
        time.sleep(every)  # sleep: poll interval of wait_until itself (deadline and message above)


def ends(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """The next offset of each partition of `topic` that holds records, read to partition EOF."""
    found: dict[int, int] = {}
    for record in reader.read_all(kafka, topic):
        found[record.partition] = max(found.get(record.partition, 0), record.offset + 1)
    return found


def committed(kafka: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on `topic` (partitions without a commit left out)."""
    from confluent_kafka import Consumer, TopicPartition

    from processors.kafka import config

    consumer = Consumer(config.consumer(kafka, group))
    try:
        partitions = [TopicPartition(topic, p) for p in reader.topic_partitions(consumer, topic)]
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10) if tp.offset >= 0}
    finally:
        consumer.close()


def committed_to_end(kafka: KafkaSettings, group: str, topic: str) -> bool:
    """The group has committed every record of `topic` that is there now: whatever its members
    produce for those records has been acknowledged, so output topics read to EOF are final."""
    wanted = ends(kafka, topic)
    done = committed(kafka, group, topic)
    return all(done.get(p, -1) >= end for p, end in wanted.items())


def read(
    kafka: KafkaSettings, topic: str, codec: Codec, kind: Any, *, at_least: int = 0, timeout: float = 30
) -> list[dict[str, Any]]:
    """Decoded records of `topic`, read to partition EOF; with `at_least`, waiting up to `timeout` until
    there are that many (and failing, saying how many there were, if they never come)."""
    records: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal records
        records = [codec.decode(kind, r.value or b"") | {"_key": r.key} for r in reader.read_all(kafka, topic)]
        return len(records) >= at_least

    wait_until(enough, timeout, lambda: f"{at_least} {kind} records in {topic} (there are {len(records)})", every=0.2)
    return records


def post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> httpx.Response:
    return httpx.request(method, url, content=body, headers=headers or {}, timeout=30)


def raw_delivery(provider: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    from datetime import UTC, datetime

    from processors.model import RawDelivery

    return RawDelivery(str(uuid.uuid4()), provider, provider, "POST", datetime.now(UTC), body, headers or {})


def produce_raw(
    kafka: KafkaSettings, topic: str, deliveries: list[Any], codec: Codec, *, timestamp_ms: int = 0
) -> None:
    """Write envelopes to the raw topic exactly as the gateway does (same key, same encoding); with
    `timestamp_ms`, every record carries that timestamp (for tests where record time matters)."""
    from confluent_kafka import Producer

    from processors.avro.records import delivery_to_record
    from processors.kafka import config
    from processors.pipeline import routing_id

    producer = Producer(config.producer(kafka, **{"linger.ms": 20}))
    for d in deliveries:
        key = routing_id(d.provider, d.body) or d.request_id
        value = codec.encode("RawDelivery", delivery_to_record(d), topic)
        producer.produce(topic, key=key.encode(), value=value, timestamp=timestamp_ms)
        producer.poll(0)
    assert producer.flush(60) == 0


def produce_noise(kafka: KafkaSettings, topic: str, count: int, codec: Codec) -> None:
    """`count` raw records of other esign verifications, one per key, as fast as the broker takes them."""
    from confluent_kafka import Producer

    from processors.avro.records import delivery_to_record
    from processors.kafka import config

    value = codec.encode("RawDelivery", delivery_to_record(raw_delivery("esign", b'{"submissionId":"other"}')))
    producer = Producer(config.producer(kafka, **{"linger.ms": 50, "batch.num.messages": 10_000}))
    tag = uuid.uuid4().hex[:8]
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=f"esign:other-{tag}-{i}".encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def latest_states(kafka: KafkaSettings, topic: str, codec: Codec) -> dict[str, dict[str, Any]]:
    """The state table as a downstream consumer sees it: the last record per key."""
    return state_table(reader.read_all(kafka, topic), codec)


def state_table(records: Iterable[reader.Record], codec: Codec) -> dict[str, dict[str, Any]]:
    """The last decoded VerificationState per key of a state topic's records (tombstones delete)."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        key = (record.key or b"").decode()
        if record.value is None:
            table.pop(key, None)
        else:
            table[key] = codec.decode("VerificationState", record.value)
    return table


def processor_env(kafka: KafkaSettings, topic_settings: TopicSettings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KYCSTREAM_PROCESSOR__METRICS_PORT": "0",
        "KYCSTREAM_LOG_LEVEL": "WARNING",
        "KYCSTREAM_PROCESSOR__SESSION_TIMEOUT_MS": str(FAST_GROUP["session_timeout_ms"]),
        **{f"KYCSTREAM_TOPICS__{role.upper()}": getattr(topic_settings, role) for role in topics.ROLES},
        **extra,
    }
