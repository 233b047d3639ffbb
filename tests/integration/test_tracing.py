"""OpenTelemetry traces across the real gateway, broker and processor: one trace from request to event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.settings import GatewaySettings
from processors import tracing
from processors.kafka import reader
from processors.settings import KafkaSettings
from tests import cases
from tests.conftest import DEV_SECRET, committed_to_end, post, processing, unique, wait_until
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker

# A provider that sends its own trace context (W3C's example ids).
PROVIDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PROVIDER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans as they end; tracing is off again afterwards."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    try:
        yield spans
    finally:
        tracing.disable()
        provider.shutdown()


def _send(url: str, settings: GatewaySettings, extra: dict[str, str] | None = None) -> tuple[str, cases.Case]:
    case = next(c for c in cases.load("xendit") if c.event)
    headers = {**case.headers, **auth_headers(settings.sources["xendit"], case.body), **(extra or {})}
    response = post(f"{url}/webhooks/xendit", case.body, {**headers, "content-type": "application/json"})
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"]), case


def _traceparent(record: reader.Record) -> str | None:
    found = [v for k, v in record.headers if k == "traceparent"]
    return (found[0].decode() if isinstance(found[0], bytes) else found[0]) if found else None


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_one_trace_from_webhook_to_event(
    exporter: InMemorySpanExporter, gateway: tuple[str, GatewaySettings], kafka: KafkaSettings
) -> None:
    url, settings = gateway
    topics = settings.topics
    request_id, case = _send(url, settings)
    group = unique("traced")
    with processing(kafka, topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, topics.raw), 60, "the delivery processed")
        wait_until(
            lambda: any(s.name == f"send {topics.events}" for s in exporter.get_finished_spans()),
            30,
            "the event's produce span ended (its delivery report)",
        )
    spans = list(exporter.get_finished_spans())
    request = _one(spans, "POST /webhooks/{source}")
    raw_send = _one(spans, f"send {topics.raw}")
    process = _one(spans, f"process {topics.raw}")
    event_send = _one(spans, f"send {topics.events}")
    assert request.context is not None and request.parent is None
    trace_id = request.context.trace_id
    # request -> produce to raw -> processing of the record -> produce of the event
    for child, parent in ((raw_send, request), (process, raw_send), (event_send, process)):
        assert child.context is not None and child.context.trace_id == trace_id, child.name
        assert child.parent is not None and parent.context is not None
        assert child.parent.span_id == parent.context.span_id, (child.name, parent.name)

    assert request.kind == SpanKind.SERVER
    assert dict(request.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/webhooks/{source}",
        "http.response.status_code": 200,
        "kycstream.request_id": request_id,
        "kycstream.source": "xendit",
    }
    assert (raw_send.kind, process.kind, event_send.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER)
    raw_attrs, process_attrs = dict(raw_send.attributes or {}), dict(process.attributes or {})
    assert raw_attrs["messaging.system"] == "kafka" and raw_attrs["messaging.destination.name"] == topics.raw
    assert (process_attrs["messaging.destination.partition.id"], process_attrs["messaging.kafka.offset"]) == (
        raw_attrs["messaging.destination.partition.id"],
        raw_attrs["messaging.kafka.offset"],
    )
    assert process_attrs["messaging.consumer.group.name"] == group
    assert process_attrs["kycstream.outcome"] == "event"
    assert dict(event_send.attributes or {})["messaging.destination.name"] == topics.events
    # Never bodies, credentials or record keys.
    values = [str(v) for s in spans for v in (s.attributes or {}).values()]
    assert not [v for v in values if DEV_SECRET in v or case.body.decode() in v]
    assert not [k for s in spans for k in (s.attributes or {}) if "key" in k or "body" in k]

    # The trace context travels in the records' headers: the raw record's is its produce span's, the
    # event's is the event produce span's, in the request's trace.
    sampled = f"{request.context.trace_flags:02x}"  # 01, or 03 where the SDK marks its ids random
    (raw,) = reader.read_all(kafka, topics.raw)
    (event,) = reader.read_all(kafka, topics.events)
    assert raw_send.context is not None and event_send.context is not None
    assert _traceparent(raw) == f"00-{trace_id:032x}-{raw_send.context.span_id:016x}-{sampled}"
    assert _traceparent(event) == f"00-{trace_id:032x}-{event_send.context.span_id:016x}-{sampled}"


def test_the_senders_trace_is_continued(exporter: InMemorySpanExporter, gateway: tuple[str, GatewaySettings]) -> None:
    url, settings = gateway
    _send(url, settings, {"traceparent": f"00-{PROVIDER_TRACE}-{PROVIDER_SPAN}-01"})
    wait_until(lambda: len(exporter.get_finished_spans()) >= 2, 10, "the request's spans ended")
    request = _one(list(exporter.get_finished_spans()), "POST /webhooks/{source}")
    assert request.context is not None and request.parent is not None
    assert f"{request.context.trace_id:032x}" == PROVIDER_TRACE
    assert f"{request.parent.span_id:016x}" == PROVIDER_SPAN


def test_refusals_are_spans_without_a_produce(
    exporter: InMemorySpanExporter, gateway: tuple[str, GatewaySettings]
) -> None:
    url, _ = gateway
    assert post(f"{url}/webhooks/xendit", b"{}", {"x-callback-token": "wrong"}).status_code == 401
    wait_until(lambda: exporter.get_finished_spans(), 10, "the request's span ended")
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {})["http.response.status_code"] == 401
    assert "wrong" not in str(dict(span.attributes or {}))


def test_off_no_spans_and_no_headers(gateway: tuple[str, GatewaySettings], kafka: KafkaSettings) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()  # a provider nobody enabled: tracing stays off
    provider.add_span_processor(SimpleSpanProcessor(spans))
    assert not tracing.ENABLED
    url, settings = gateway
    _send(url, settings, {"traceparent": f"00-{PROVIDER_TRACE}-{PROVIDER_SPAN}-01"})
    group = unique("untraced")
    with processing(kafka, settings.topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "the delivery processed")
        wait_until(lambda: reader.read_all(kafka, settings.topics.events), 30, "the event written")
    records = [*reader.read_all(kafka, settings.topics.raw), *reader.read_all(kafka, settings.topics.events)]
    assert len(records) == 2
    assert [_traceparent(r) for r in records] == [None, None]
    assert spans.get_finished_spans() == ()
