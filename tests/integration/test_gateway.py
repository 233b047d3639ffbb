"""The gateway through real HTTP and the real broker: what it accepts, persists and refuses."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.settings import GatewaySettings, SourceSettings
from processors.kafka import embedded, topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import dev_sources, post, read, serving, wait_until
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker

XENDIT = json.dumps({"event": "account.verification", "data": {"id": "acct-42", "kyc": {"status": "PASSED"}}}).encode()
ESIGN = json.dumps({"submissionId": "sub-42", "status": "COMPLETED", "result": "VALID"}).encode()


def test_200_only_with_the_raw_record_in_kafka(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    headers = {"x-callback-token": "dev-secret", "webhook-id": "wh-42", "content-type": "application/json"}
    response = post(f"{url}/webhooks/xendit", XENDIT, headers)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    assert response.headers["x-request-id"] == request_id

    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=1, timeout=0)
    assert len(raw) == 1, "the record must be in Kafka by the time the 200 is sent"
    record = raw[0]
    assert record["request_id"] == request_id
    assert record["body"] == XENDIT
    assert record["source"] == "xendit" and record["provider"] == "xendit"
    assert record["headers"]["webhook-id"] == "wh-42"
    assert "x-callback-token" not in record["headers"], "credentials never reach Kafka"
    assert record["_key"] == b"xendit:acct-42"
    assert record["remote_addr"] == "127.0.0.1"


def test_esign_accepts_its_configured_methods(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    for method in ("POST", "PUT", "PATCH"):
        response = post(f"{url}/webhooks/esign", ESIGN, {"authorization": "Bearer dev-secret"}, method)
        assert response.status_code == 200, (method, response.text)
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=3)
    assert sorted(r["method"] for r in raw) == ["PATCH", "POST", "PUT"]
    assert {r["_key"] for r in raw} == {b"esign:sub-42"}


def test_unparseable_body_is_keyed_by_request_id(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    response = post(f"{url}/webhooks/esign", b"NumberInt(200)", {"authorization": "Bearer dev-secret"})
    assert response.status_code == 200
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=1)
    assert raw[0]["_key"] == response.json()["request_id"].encode()


def test_refusals_have_a_status_a_reason_and_never_reach_kafka(
    gateway_settings: Callable[..., GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    sources = dev_sources(
        xendit={"auth": {"credentials": ["old-secret", "new-secret"]}},
        esign={"allow_ips": ["10.0.0.0/8"], "auth": {"scheme": "basic", "credentials": ["esign:pw"]}},
    )
    sources["limited"] = SourceSettings.model_validate(
        {"provider": "xendit", "auth": {"credentials": ["t"]}, "rate_limit": {"per_second": 0.01, "burst": 1}}
    )
    settings = gateway_settings(sources, max_body_bytes=2048)
    accepted: list[str] = []
    with serving(settings) as url:

        def expect(status: int, code: str, response: httpx.Response) -> None:
            assert response.status_code == status, response.text
            assert response.json()["error"] == code
            assert response.json()["detail"]

        expect(401, "unauthorized", post(f"{url}/webhooks/xendit", XENDIT))
        expect(401, "unauthorized", post(f"{url}/webhooks/xendit", XENDIT, {"x-callback-token": "wrong"}))
        expect(401, "unauthorized", post(f"{url}/webhooks/xendit", XENDIT, {"x-callback-token": ""}))
        for secret in ("old-secret", "new-secret"):  # rotation: both accepted at once
            ok = post(f"{url}/webhooks/xendit", XENDIT, {"x-callback-token": secret})
            assert ok.status_code == 200
            accepted.append(ok.json()["request_id"])

        expect(403, "forbidden", post(f"{url}/webhooks/esign", ESIGN, {"authorization": "Basic ZXNpZ246cHc="}))
        expect(404, "unknown_source", post(f"{url}/webhooks/nobody", XENDIT))
        expect(404, "not_found", post(f"{url}/elsewhere", XENDIT))
        not_allowed = post(f"{url}/webhooks/xendit", XENDIT, {"x-callback-token": "old-secret"}, "PUT")
        expect(405, "method_not_allowed", not_allowed)
        assert not_allowed.headers["allow"] == "POST"
        expect(405, "method_not_allowed", httpx.get(f"{url}/webhooks/xendit"))
        expect(
            413, "payload_too_large", post(f"{url}/webhooks/xendit", b"x" * 4096, {"x-callback-token": "old-secret"})
        )

        first = post(f"{url}/webhooks/limited", XENDIT, {"x-callback-token": "t"})
        assert first.status_code == 200
        accepted.append(first.json()["request_id"])
        limited = post(f"{url}/webhooks/limited", XENDIT, {"x-callback-token": "t"})
        expect(429, "rate_limited", limited)
        assert int(limited.headers["retry-after"]) >= 1

    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=len(accepted))
    assert sorted(r["request_id"] for r in raw) == sorted(accepted)


def test_forwarded_for_is_trusted_only_from_configured_proxies(
    gateway_settings: Callable[..., GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    sources = dev_sources(xendit={"allow_ips": ["203.0.113.0/24"]})
    untrusted = gateway_settings(sources)
    spoofed = {"x-callback-token": "dev-secret", "x-forwarded-for": "203.0.113.9"}
    with serving(untrusted) as url:
        assert post(f"{url}/webhooks/xendit", XENDIT, spoofed).status_code == 403
    trusted = gateway_settings(sources, trusted_proxies=["127.0.0.0/8"])
    with serving(trusted) as url:
        response = post(f"{url}/webhooks/xendit", XENDIT, {**spoofed, "x-forwarded-for": "198.51.100.1, 203.0.113.9"})
        assert response.status_code == 200, response.text
        assert post(f"{url}/webhooks/xendit", XENDIT, {**spoofed, "x-forwarded-for": "198.51.100.1"}).status_code == 403
    raw = read(kafka, trusted.topics.raw, codec, "RawDelivery", at_least=1)
    assert [r["remote_addr"] for r in raw] == ["203.0.113.9"]


def test_every_provider_source_authenticates_its_own_way(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    for name, source in settings.sources.items():
        body = b'{"probe": true}'
        good = post(f"{url}/webhooks/{name}", body, auth_headers(source, body))
        assert good.status_code == 200, (name, good.text)
        bad = post(f"{url}/webhooks/{name}", body, auth_headers(source, body, secret="not-the-secret"))
        assert bad.status_code == 401, (name, bad.text)
        missing = post(f"{url}/webhooks/{name}", body)
        assert missing.status_code == 401, (name, missing.text)
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery", at_least=len(settings.sources))
    assert sorted(r["source"] for r in raw) == sorted(settings.sources)


def test_health_readiness_and_metrics(gateway: tuple[str, GatewaySettings]) -> None:
    url, _ = gateway
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    post(f"{url}/webhooks/xendit", XENDIT, {"x-callback-token": "dev-secret"})
    metrics = httpx.get(f"{url}/metrics").text
    assert 'kycstream_gateway_requests_total{source="xendit",status="200"} 1.0' in metrics
    assert "kycstream_gateway_produce_seconds_bucket" in metrics


def test_readiness_fails_when_topics_are_missing(gateway_settings: Callable[..., GatewaySettings]) -> None:
    settings = gateway_settings()
    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"raw": "absent.topic"})})
    with serving(settings) as url:
        response = httpx.get(f"{url}/readyz")
    assert response.status_code == 503
    assert "absent.topic" in response.json()["detail"]


def test_503_not_200_when_kafka_is_down(tmp_path: object) -> None:
    own = embedded.start("127.0.0.1", embedded.free_port())
    try:
        kafka = KafkaSettings(bootstrap_servers=own.bootstrap_servers)
        names = TopicSettings(partitions=1)
        topics.create_all(kafka, names)
        settings = GatewaySettings(
            kafka=kafka,
            topics=names,
            sources=dev_sources(),
            gateway={"host": "127.0.0.1", "port": embedded.free_port(), "produce_timeout_s": 1.5},
        )
        with serving(settings) as url:
            headers = {"x-callback-token": "dev-secret"}
            assert post(f"{url}/webhooks/xendit", XENDIT, headers).status_code == 200
            own.stop()
            started = time.monotonic()
            refused = post(f"{url}/webhooks/xendit", XENDIT, headers)
            elapsed = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "kafka_unavailable"
            assert refused.headers["retry-after"] == "5"
            assert elapsed < 5, "the gateway answers within its produce deadline"
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
    finally:
        own.stop()


class _KubeletVolume:
    """A Secret volume as the kubelet writes it (its AtomicWriter): each key a symlink through
    `..data` to a timestamped directory; an update writes a new directory and swaps `..data`."""

    def __init__(self, root: Path, key: str, text: str) -> None:
        self.root, self.key, self.version = root, key, 0
        self._write(text)
        (root / key).symlink_to(Path("..data") / key)

    def _write(self, text: str) -> None:
        self.version += 1
        data = self.root / f"..2026_{self.version}"
        data.mkdir()
        (data / self.key).write_text(text)
        (self.root / "..data_tmp").symlink_to(data.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        if self.version > 1:
            old = self.root / f"..2026_{self.version - 1}"
            (old / self.key).unlink()
            old.rmdir()

    def update(self, text: str) -> None:
        self._write(text)


@pytest.mark.parametrize("mount", ["file", "kubelet"])
def test_a_rotated_credentials_file_takes_effect_without_a_restart(
    gateway_settings: Callable[..., GatewaySettings], tmp_path: Path, mount: str
) -> None:
    """Rotation as deploy/README.md says: add the new secret to the file, switch the provider, remove the old one;
    the file replaced in place, or a mounted Secret updated by the kubelet."""
    secrets = tmp_path / "xendit-tokens"
    volume = _KubeletVolume(tmp_path, secrets.name, "old-token\n") if mount == "kubelet" else None
    if volume is None:
        secrets.write_text("old-token\n")
    source = SourceSettings.model_validate({"provider": "xendit", "auth": {"credentials_file": str(secrets)}})
    settings = gateway_settings(sources={"xendit": source})
    body = b'{"event": "account.verification", "data": {"id": "rot-1", "kyc": {"status": "PASSED"}}}'

    def status(token: str) -> int:
        return post(f"{url}/webhooks/xendit", body, {"x-callback-token": token}).status_code

    def replace(text: str) -> None:  # swapped in atomically
        if volume is not None:
            volume.update(text)
            return
        (tmp_path / "new").write_text(text)
        os.replace(tmp_path / "new", secrets)

    with serving(settings) as url:
        assert (status("old-token"), status("new-token")) == (200, 401)
        replace("old-token\nnew-token\n")
        wait_until(lambda: status("new-token") == 200, 10, "the new token accepted")
        assert status("old-token") == 200, "both during the switch"
        replace("new-token\n")
        wait_until(lambda: status("old-token") == 401, 10, "the old token refused once removed")
        assert status("new-token") == 200
