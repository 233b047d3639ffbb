"""Tracing's setup from the standard OTEL_* variables, and the trace context in record headers."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processors import tracing
from processors.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}])
def test_off_unless_an_exporter_is_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.provider_from_env("kycstream-test") is None
    assert tracing.setup("kycstream-test") is False
    assert not tracing.ENABLED


def test_sdk_disabled_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.provider_from_env("kycstream-test") is None


def test_console_exporter_and_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = tracing.provider_from_env("kycstream-gateway")
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "kycstream-gateway"
        exporters = [p.span_exporter for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
        assert [type(e) for e in exporters] == [ConsoleSpanExporter]
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kyc-edge")
    provider = tracing.provider_from_env("kycstream-gateway")
    assert provider is not None
    provider.shutdown()
    assert provider.resource.attributes["service.name"] == "kyc-edge"


def test_an_exporter_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        tracing.provider_from_env("kycstream-test")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-nowhere")
    with pytest.raises(ConfigError, match="no span exporter 'zipkin-nowhere'"):
        tracing.provider_from_env("kycstream-test")


def test_record_headers_carry_the_context_of_a_span() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    try:
        span = tracing.send("events", 2, "event-1")
        headers = tracing.context_headers(span)
        tracing.acked(span, 2, 41)
        span.end()
        with tracing.processing(headers, "events", 2, 41, "group") as child:
            assert child.get_span_context().trace_id == span.get_span_context().trace_id
        assert tracing.extract(None) is None and tracing.extract([("other", b"x")]) is None
        assert tracing.extract(dict(headers)) is not None
    finally:
        tracing.disable()
        provider.shutdown()
    assert [s.name for s in spans.get_finished_spans()] == ["send events", "process events"]
    assert [k for k, _ in headers] == ["traceparent"]
