"""OpenTelemetry traces from webhook to event, off unless the standard OTEL_* variables ask for them.

One trace per delivery: the gateway's request span (SERVER), its produce to the raw topic
(PRODUCER), the processor's handling of the record (CONSUMER) and the event's produce (PRODUCER),
linked through W3C trace context (`traceparent`) in the Kafka record headers. Attributes follow
the messaging semantic conventions; never bodies, credentials or record keys (keys hold
verification ids: `kycstream.request_id` finds a delivery instead).

`ENABLED` is set once at start (`setup`, or `enable` in tests); hot paths test it before touching
the API, so with tracing off a request or a record pays one attribute lookup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from processors.errors import ConfigError

if TYPE_CHECKING:  # the SDK is imported only when tracing is turned on
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

RecordHeaders = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None

ENABLED = False
_tracer: trace.Tracer = trace.NoOpTracer()

_ROUTE = "/webhooks/{source}"
# W3C trace context in HTTP and record headers, whatever OTEL_PROPAGATORS says; baggage is not carried.
_PROPAGATOR = TraceContextTextMapPropagator()


# --- setup ---------------------------------------------------------------------------------------


def setup(service_name: str) -> bool:
    """Turn tracing on when OTEL_TRACES_EXPORTER names an exporter; True if it did.

    The SDK reads the rest of OTEL_*: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the resource),
    OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* (batching), OTEL_EXPORTER_OTLP_* (endpoint, headers).
    """
    provider = provider_from_env(service_name)
    if provider is None:
        return False
    trace.set_tracer_provider(provider)  # also for any library that traces through the global API
    enable(provider)
    return True


def provider_from_env(service_name: str) -> TracerProvider | None:
    """A TracerProvider exporting to each of OTEL_TRACES_EXPORTER's exporters; None when it is unset
    or `none`, or OTEL_SDK_DISABLED is true."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"] or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = [_exporter(name) for name in names if name != "none"]
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # neither named it
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> SpanExporter:
    """The exporter registered under the SDK's entry point group; `otlp` is OTLP/HTTP unless
    OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says grpc (the specification's default is http/protobuf)."""
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        package = {"otlp_proto_http": "'kycstream[otlp]'", "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc"}
        extra = f" (pip install {package[name]})" if name in package else ""
        raise ConfigError(f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed{extra}; or use console")
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def enable(provider: trace.TracerProvider) -> None:
    global ENABLED, _tracer
    _tracer = provider.get_tracer("kycstream")
    ENABLED = True


def disable() -> None:
    global ENABLED, _tracer
    ENABLED = False
    _tracer = trace.NoOpTracer()


# --- the gateway ---------------------------------------------------------------------------------


def webhook(method: str, raw_headers: Sequence[tuple[bytes, bytes]], request_id: str) -> AbstractContextManager[Span]:
    """The request's span, current while it runs; continues the sender's `traceparent` if any."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers if k in (b"traceparent", b"tracestate")}
    return _tracer.start_as_current_span(
        f"{method} {_ROUTE}",
        context=_PROPAGATOR.extract(carrier) if carrier else None,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": _ROUTE, "kycstream.request_id": request_id},
    )


def answered(span: Span, source: str, status: int) -> None:
    span.set_attribute("kycstream.source", source)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # server spans are errors on 5xx only: a refusal is the client's
        span.set_status(Status(StatusCode.ERROR))


# --- Kafka ---------------------------------------------------------------------------------------


def context_headers(span: Span | None = None) -> list[tuple[str, bytes]]:
    """Record headers carrying the trace context of `span`, else of the current span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: RecordHeaders) -> Context | None:
    """The trace context a record carries, or None."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    carrier = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in pairs if k in _PROPAGATOR.fields and v}
    return _PROPAGATOR.extract(carrier) if carrier else None


def _messaging(operation: str, topic: str, partition: int | None) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    return attributes


def sending(topic: str) -> AbstractContextManager[Span]:
    """A produce the caller awaits: the span is current (context_headers() picks it) and ends at the ack."""
    return _tracer.start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=_messaging("send", topic, None)
    )


def send(topic: str, partition: int, message_id: str) -> Span:
    """A produce acknowledged later by a delivery report: acked(), then end() it there."""
    attributes = _messaging("send", topic, partition)
    attributes["messaging.message.id"] = message_id
    return _tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes)


def acked(span: Span, partition: int | None, offset: int | None, error: str | None = None) -> None:
    """What Kafka answered to the produce of `span`."""
    if partition is not None:
        span.set_attribute("messaging.destination.partition.id", str(partition))
    if offset is not None:
        span.set_attribute("messaging.kafka.offset", offset)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))


def processing(
    headers: RecordHeaders, topic: str, partition: int, offset: int, group: str
) -> AbstractContextManager[Span]:
    """The handling of one consumed record, current while it runs, child of the context it carries."""
    attributes = _messaging("process", topic, partition)
    attributes["messaging.kafka.offset"] = offset
    attributes["messaging.consumer.group.name"] = group
    return _tracer.start_as_current_span(
        f"process {topic}", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attributes
    )
