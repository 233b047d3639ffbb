"""The gateway's ASGI app without a broker: the webhook fast path's dispatch, failures and disconnects."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from processors.kafka.producer import Delivered
from processors.model import Expectation, RawDelivery
from tests.conftest import dev_sources, post, serving_app, wait_until

XENDIT = json.dumps({"event": "account.verification", "data": {"id": "acct-7", "kyc": {"status": "PASSED"}}}).encode()
TOKEN = {"x-callback-token": "dev-secret"}


class Sink:
    """Records what it is asked to write; `fail` makes the next write raise it."""

    topic = "raw"

    def __init__(self) -> None:
        self.written: list[RawDelivery] = []
        self.keys: list[str] = []
        self.fail: Exception | None = None

    async def write(self, delivery: RawDelivery, key: str) -> Delivered:
        if self.fail is not None:
            raise self.fail
        self.written.append(delivery)
        self.keys.append(key)
        return Delivered(self.topic, 0, len(self.written) - 1)

    async def write_expectation(self, expectation: Expectation) -> Delivered:
        return Delivered("expected", 0, 0)

    def envelope(self, delivery: RawDelivery) -> tuple[bytes, list[tuple[str, bytes]]]:
        return delivery.body, [("kycstream-request-id", delivery.request_id.encode())]

    def largest_body(self, source: str, provider: str) -> int:
        return 1 << 30

    def check(self, key: bytes, value: bytes, headers: object) -> None:
        pass

    async def not_ready(self) -> str | None:
        return None


def settings(**gateway: Any) -> GatewaySettings:
    return GatewaySettings(sources=dev_sources(), kafka={"bootstrap_servers": "127.0.0.1:1"}, gateway=gateway)


def test_a_failing_sink_answers_500_with_a_reason_and_the_gateway_goes_on() -> None:
    sink = Sink()
    with serving_app(create_app(settings(), sink)) as url:
        sink.fail = RuntimeError("boom")
        failed = post(f"{url}/webhooks/xendit", XENDIT, TOKEN)
        assert failed.status_code == 500
        assert failed.json()["error"] == "internal_error" and "retry later" in failed.json()["detail"]
        assert failed.headers["x-request-id"]
        sink.fail = None
        ok = post(f"{url}/webhooks/xendit", XENDIT, TOKEN)
        assert ok.status_code == 200 and ok.json() == {"status": "accepted", "request_id": ok.headers["x-request-id"]}
        assert [d.request_id for d in sink.written] == [ok.headers["x-request-id"]]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'kycstream_gateway_requests_total{source="xendit",status="500"} 1.0' in metrics
        assert 'kycstream_gateway_requests_total{source="xendit",status="200"} 1.0' in metrics


def test_only_one_path_segment_after_webhooks_is_a_source() -> None:
    sink = Sink()
    with serving_app(create_app(settings(), sink)) as url:
        for path in ("/webhooks/", "/webhooks/xendit/extra", "/webhooksxendit", "/webhooks"):
            answer = post(f"{url}{path}", XENDIT, TOKEN)
            assert answer.status_code == 404, path
            assert answer.json()["error"] == "not_found", path
        assert post(f"{url}/webhooks/nobody", XENDIT, TOKEN).json()["error"] == "unknown_source"
    assert sink.written == []


def _asgi(app: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one POST /webhooks/xendit through the ASGI app, `messages` received in order; what it sent."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/xendit",
        "headers": [(b"x-callback-token", b"dev-secret"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_client_gone_mid_body_is_not_answered_and_writes_nothing() -> None:
    sink = Sink()
    messages = [{"type": "http.request", "body": XENDIT[:10], "more_body": True}, {"type": "http.disconnect"}]
    assert _asgi(create_app(settings(), sink), messages) == [] and sink.written == []


def test_a_body_in_chunks_is_joined_and_limited() -> None:
    sink = Sink()
    app = create_app(settings(), sink)

    def call(chunks: list[bytes]) -> int:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        return int(_asgi(app, messages)[0]["status"])

    assert call([XENDIT[:5], XENDIT[5:20], XENDIT[20:]]) == 200
    assert sink.written[-1].body == XENDIT
    limit = settings().gateway.max_body_bytes
    assert call([b"x" * (limit // 2), b"x" * (limit // 2 + 1)]) == 413
    assert len(sink.written) == 1


def test_expectations_api_keys_from_a_file_rotate_and_a_missing_file_turns_the_route_off(tmp_path: Path) -> None:
    """gateway.expectations_api_keys_file: a mounted Secret, read again when it changes; absent (the
    optional Secret not created), POST /expectations/ answers 404 as without keys."""
    keys = tmp_path / "keys"
    body = b'{"verification_id": "acct-7"}'

    def status(url: str, key: str) -> int:
        return post(f"{url}/expectations/xendit", body, {"authorization": f"Bearer {key}"}).status_code

    with serving_app(create_app(settings(expectations_api_keys_file=keys), Sink())) as url:
        off = post(f"{url}/expectations/xendit", body, {"authorization": "Bearer k1"})
        assert off.status_code == 404 and "expectations_api_keys_file" in off.json()["detail"]
    keys.write_text("# one key per line\nk1\n")
    with serving_app(create_app(settings(expectations_api_keys_file=keys), Sink())) as url:
        assert (status(url, "k1"), status(url, "k2")) == (200, 401)
        (tmp_path / "new").write_text("k2\n")
        os.replace(tmp_path / "new", keys)  # as the kubelet swaps a Secret's files
        wait_until(lambda: status(url, "k2") == 200, 10, "the new key accepted")
        assert status(url, "k1") == 401, "the removed key refused"


def test_a_provider_module_that_raises_reading_the_id_is_logged_counted_and_keyed_by_request_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Accepted (a provider bug must not refuse a delivery) but visible: out of order with its
    verification's other deliveries, so counted, and logged with where it raised, not the message
    (which may quote the body)."""
    from processors import logs
    from processors.providers import REGISTRY

    def raises(doc: object) -> str:
        return str(int("Jane Doe"))  # ValueError quoting a value from the body

    monkeypatch.setattr(REGISTRY["xendit"], "verification_id", raises)
    logs.configure("INFO", "json")
    sink, metrics = Sink(), GatewayMetrics()
    with serving_app(create_app(settings(), sink, metrics=metrics)) as url:
        answer = post(f"{url}/webhooks/xendit", XENDIT, TOKEN)
    assert answer.status_code == 200
    assert sink.keys == [answer.headers["x-request-id"]]
    assert metrics.registry.get_sample_value("kycstream_gateway_unroutable_total", {"source": "xendit"}) == 1
    lines = [json.loads(line) for line in _log_lines(capsys) if "webhook_unroutable" in line]
    assert len(lines) == 1 and lines[0]["error"] == "ValueError" and lines[0]["at"].startswith("test_gateway_app.py:")
    assert "Jane" not in json.dumps(lines)


def _log_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The JSON log lines written meanwhile (structlog prints to stdout until `logs.configure`)."""
    captured = capsys.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if line.startswith("{")]


def test_a_spool_that_cannot_be_written_refuses_with_the_source_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka away and the spool's disk full (a short write): the source's refusal, never a 200."""
    from gateway.spool.journal import Spool
    from processors.errors import BrokerError

    sink = Sink()
    sink.fail = BrokerError("Kafka is away")
    spool = Spool(tmp_path, 1 << 30, 3600).open()
    config = GatewaySettings(
        sources=dev_sources(xendit={"on_kafka_unavailable": "spool"}),
        kafka={"bootstrap_servers": "127.0.0.1:1"},
    )
    real_write = os.write
    monkeypatch.setattr("gateway.spool.journal.os.write", lambda fd, data: real_write(fd, data[:10]))
    with serving_app(create_app(config, sink, spool=spool)) as url:
        answer = post(f"{url}/webhooks/xendit", XENDIT, TOKEN)
    assert (answer.status_code, answer.json()["error"]) == (503, "spool_failed"), answer.text
    assert answer.headers["retry-after"] and spool.records == 0
