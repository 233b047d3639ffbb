"""The committed contract documents are what the commands generate, and the gateway answers only
statuses its OpenAPI document lists."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gateway.app import create_app
from gateway.settings import GatewaySettings
from processors import contract
from processors.avro.codec import RECORD_TYPES
from processors.cli import app
from processors.errors import BrokerError
from processors.kafka import topics
from processors.settings import TopicSettings
from tests.conftest import dev_sources, post, serving_app
from tests.unit.test_gateway_app import TOKEN, XENDIT, Sink, settings

DOCS = Path(__file__).parents[2] / "docs"


@pytest.mark.parametrize(("command", "committed"), [("asyncapi", "asyncapi.yaml"), ("openapi", "openapi.json")])
def test_the_committed_document_is_what_the_command_generates(
    command: str, committed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KYCSTREAM_CONFIG", "KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / committed
    result = CliRunner().invoke(app, [command, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (DOCS / committed).read_text(), (
        f"docs/{committed} is out of date: run `kycstream {command}` and commit it"
    )


def test_every_topic_and_record_type_is_in_the_asyncapi_document() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    specs = topics.specs(TopicSettings())
    assert {c["address"] for c in doc["channels"].values()} == {s.name for s in specs}
    values = {m.value for m in contract.MESSAGES}
    assert values - {None} == set(RECORD_TYPES)
    for op in doc["operations"].values():  # every operation's messages belong to its channel
        channel = op["channel"]["$ref"].rsplit("/", 1)[1]
        for ref in op["messages"]:
            assert ref["$ref"].split("/")[-1] in doc["channels"][channel]["messages"]


def test_the_gateway_serves_its_openapi_document() -> None:
    with serving_app(create_app(settings(), Sink())) as url:
        served = httpx.get(f"{url}/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads((DOCS / "openapi.json").read_text())


def test_every_status_the_webhook_route_answers_is_documented() -> None:
    documented = json.loads((DOCS / "openapi.json").read_text())["paths"]["/webhooks/{source}"]
    sink = Sink()
    answered: list[tuple[str, int]] = []
    sources = dev_sources(metamap={"allow_ips": ["192.0.2.0/24"]}, incode={"rate_limit": {"per_second": 0.001}})
    config = GatewaySettings(
        sources=sources, kafka={"bootstrap_servers": "127.0.0.1:1"}, gateway={"max_body_bytes": 64}
    )
    with serving_app(create_app(config, sink)) as url:

        def send(method: str, path: str, body: bytes = XENDIT, headers: dict[str, str] = TOKEN) -> None:
            answered.append((method, post(f"{url}{path}", body, headers, method=method).status_code))

        send("POST", "/webhooks/xendit", b'{"data":{"id":"a"}}')  # 200
        send("POST", "/webhooks/nobody")  # 404
        send("PUT", "/webhooks/xendit")  # 405
        send("POST", "/webhooks/xendit", b"{}", {})  # 401
        send("POST", "/webhooks/xendit", b"x" * 65)  # 413
        send("POST", "/webhooks/metamap")  # 403
        send("POST", "/webhooks/incode", b"{}", {})  # 401, taking the bucket's one token
        send("POST", "/webhooks/incode", b"{}", {})  # 429 rate_limited
        sink.fail = BrokerError("Kafka away")
        send("POST", "/webhooks/signicat", b"{}", {"authorization": "Bearer dev-secret"})  # 429: signicat's

        send("POST", "/webhooks/xendit", b'{"data":{"id":"a"}}')  # 503
        sink.fail = RuntimeError("a bug")
        send("POST", "/webhooks/xendit", b'{"data":{"id":"a"}}')  # 500
    assert {status for _, status in answered} == {200, 403, 404, 405, 401, 413, 429, 503, 500}
    for method, status in answered:
        operation = documented.get(method.lower()) or documented["post"]
        assert str(status) in operation["responses"], (method, status)


def test_the_consumer_guides_example_knows_each_writer_schema_the_codec_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its set-up (before it connects), for a type with a retired version in schemas/history/."""
    from processors.kafka.serde import Codec
    from schemas import SCHEMA_DIR
    from tests.integration.test_consumer_guide import guide_example

    example = guide_example()
    monkeypatch.setenv("TYPE", "kycstream.VerificationState")
    monkeypatch.setenv("KYCSTREAM_SCHEMAS", str(SCHEMA_DIR))
    namespace: dict[str, object] = {}
    exec(example[: example.index("consumer = Consumer(")], namespace)
    known = set(namespace["writer_schemas"])  # type: ignore[call-overload]
    assert len(known) == 3, "the current VerificationState and its retired versions (raw_offset, EXPIRED)"
    codec = Codec()
    current = codec.encode("VerificationState", _a_state())[:10]
    assert current in known and all(prefix[2:] in codec._writers for prefix in known)


def _a_state() -> dict[str, object]:
    from datetime import UTC, datetime

    from processors.avro.records import state_to_record
    from processors.model import VerificationState, VerificationStatus

    now = datetime.now(UTC)
    return dict(state_to_record(VerificationState("xendit:a", "xendit", "a", VerificationStatus.APPROVED, "e", now)))
