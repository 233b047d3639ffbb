"""Each role's Kafka clients, recorded in a run against the broker, use only what
processors/kafka/access.py declares and what its KafkaUser in deploy/ allows.

Each role runs with its own `client.id`, so what its clients do is told apart from the test's
own readers and writers (tests/kafka_usage.py records them all). The names of the run (unique
topics and groups) are translated to the deployed ones before the KafkaUsers are asked.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer
from typer.testing import CliRunner

from gateway.settings import GatewaySettings
from processors.avro.records import expectation_to_record
from processors.cli import app
from processors.kafka import access, config, embedded, reader, topics
from processors.kafka.serde import Codec
from processors.model import Expectation
from processors.settings import KafkaSettings, ProcessorSection, ReconcileSection, TopicSettings
from tests.conftest import (
    EXPECTATIONS_API_KEY,
    committed_to_end,
    dev_sources,
    post,
    processing,
    processor_env,
    produce_raw,
    raw_delivery,
    read,
    reconciling,
    serving,
    serving_app,
    unique,
    wait_until,
)
from tests.credentials import auth_headers
from tests.kafka_usage import Usage, Use, record

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
USERS = ROOT / "deploy" / "strimzi" / "topics-users" / "users.yaml"
DEPLOYED_CONFIG = ROOT / "deploy" / "base" / "kycstream.yaml"


class Run:
    """This test's topics and groups, and the same names as deployed."""

    def __init__(self, kafka: KafkaSettings) -> None:
        tag = uuid.uuid4().hex[:8]
        # Versioned like the deployed names, so a replay's fresh `.v2` targets translate too.
        self.topics = TopicSettings(partitions=2, **{role: f"acl.{tag}.{role}.v1" for role in topics.ROLES})
        topics.create_all(kafka, self.topics)
        self.processor = ProcessorSection(group_id=unique("aclproc"), metrics_port=None)
        self.reconcile = ReconcileSection(group_id=unique("aclrec"), metrics_port=None)
        deployed = yaml.safe_load(DEPLOYED_CONFIG.read_text())
        self.deployed_topics = TopicSettings.model_validate(deployed.get("topics", {}))
        self.deployed_groups = {
            self.processor.group_id: ProcessorSection.model_validate(deployed.get("processor", {})).group_id,
            self.reconcile.group_id: ReconcileSection.model_validate(deployed.get("reconcile", {})).group_id,
        }
        self.kafka = kafka

    def client(self, role: str) -> KafkaSettings:
        return self.kafka.model_copy(update={"client_id": f"acl-{role}"})

    def used(self, usage: Usage, role: access.Role) -> set[Use]:
        """What the role's clients did; a walk over all topics counts as a Describe of this run's topics."""
        ours = {getattr(self.topics, r) for r in topics.ROLES}
        listed = {("topic", name, "Describe") for name in usage.listed[f"acl-{role}"] & ours}
        return usage.of(f"acl-{role}") | listed

    def as_deployed(self, use: Use) -> Use:
        resource, name, operation = use
        if resource == "topic":
            for r in topics.ROLES:
                prefix = access.replay_prefix(getattr(self.topics, r))
                if name.startswith(prefix):
                    return (
                        resource,
                        access.replay_prefix(getattr(self.deployed_topics, r)) + name[len(prefix) :],
                        operation,
                    )
            return use
        for ours, theirs in self.deployed_groups.items():
            name = name.replace(ours, theirs)
        return resource, name, operation

    def check(self, usage: Usage, role: access.Role) -> None:
        used = self.used(usage, role)
        assert used, f"the {role}'s clients were never recorded"
        declared = access.table(self.topics, self.processor, self.reconcile)[role]
        undeclared = sorted(u for u in used if not access.allowed(declared, *u))
        assert not undeclared, f"the {role} used what processors/kafka/access.py does not declare: {undeclared}"
        if role == "topics":
            return  # no KafkaUser: with Strimzi, the Topic Operator creates the topics
        user = _kafka_users()[f"kycstream-{role}"]
        denied = sorted(d for d in map(self.as_deployed, used) if not access.allowed(user, *d))
        assert not denied, f"the KafkaUser kycstream-{role} ({USERS.relative_to(ROOT)}) does not allow: {denied}"


def _kafka_users() -> dict[str, list[access.Grant]]:
    docs = [d for d in yaml.safe_load_all(USERS.read_text()) if d and d["kind"] == "KafkaUser"]
    return {d["metadata"]["name"]: access.from_strimzi(d["spec"]["authorization"]["acls"]) for d in docs}


@pytest.fixture
def usage(monkeypatch: pytest.MonkeyPatch) -> Usage:
    return record(monkeypatch)


@pytest.fixture
def run(kafka: KafkaSettings, usage: Usage) -> Run:
    return Run(kafka)


def _esign(vid: str, status: str = "COMPLETED") -> bytes:
    return json.dumps(
        {"submissionId": vid, "status": status, "result": "VALID", "processedAt": "2026-05-08T10:30:00Z"}
    ).encode()


def _processed(run: Run, kafka: KafkaSettings, codec: Codec, **section: Any) -> None:
    """Raw deliveries (one not JSON: a dead letter) through a processor of the run's group."""
    deliveries = [raw_delivery("esign", _esign(f"acl-{i}")) for i in range(4)] + [raw_delivery("esign", b"{nope")]
    produce_raw(kafka, run.topics.raw, deliveries, codec)
    with processing(run.client("processor"), run.topics, group_id=run.processor.group_id, **section):
        wait_until(
            lambda: committed_to_end(kafka, run.processor.group_id, run.topics.raw), 60, "the raw topic processed"
        )


def test_the_gateway_uses_what_its_user_allows(run: Run, usage: Usage, kafka: KafkaSettings, codec: Codec) -> None:
    settings = GatewaySettings(
        kafka=run.client("gateway"),
        topics=run.topics,
        sources=dev_sources(),
        gateway={"host": "127.0.0.1", "port": embedded.free_port(), "expectations_api_keys": [EXPECTATIONS_API_KEY]},
    )
    with serving(settings) as url:
        body = _esign("acl-gw")
        assert post(f"{url}/webhooks/esign", body, auth_headers(settings.sources["esign"], body)).status_code == 200
        expected = json.dumps({"verification_id": "acl-gw", "lookup": {}}).encode()
        headers = {"authorization": f"Bearer {EXPECTATIONS_API_KEY}"}
        assert post(f"{url}/expectations/esign", expected, headers).status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    run.check(usage, "gateway")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_processor_uses_what_its_user_allows(
    run: Run, usage: Usage, kafka: KafkaSettings, codec: Codec, guarantee: str
) -> None:
    _processed(run, kafka, codec, processing_guarantee=guarantee)
    assert len(read(kafka, run.topics.events, codec, "VerificationEvent")) == 4
    if guarantee == "exactly_once":
        assert any(r == "transactionalId" for r, _, _ in usage.of("acl-processor"))
    else:  # every assignment reads the events topic back (events without their dedup records)
        assert ("topic", run.topics.events, "Read") in usage.of("acl-processor")
    run.check(usage, "processor")


SUBMITTER = {"userId": "user-7", "userIdType": "CLIENT_X_USER_ID", "partnerSessionId": "sess-7"}


def test_the_reconciler_uses_what_its_user_allows(run: Run, usage: Usage, kafka: KafkaSettings, codec: Codec) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    vid = unique("acl-rec")
    submission = {**json.loads(_esign(vid)), **SUBMITTER}

    async def answer(request: Request) -> JSONResponse:  # esign's status API: approved
        return JSONResponse({"success": True, "data": submission})

    started = datetime.now(UTC) - timedelta(minutes=5)
    expectation = Expectation("esign", "esign", vid, started, dict(SUBMITTER), window_s=1)
    producer = Producer(config.producer(kafka))
    value = codec.encode("Expectation", expectation_to_record(expectation))
    producer.produce(run.topics.expected, key=expectation.key.encode(), value=value)
    assert producer.flush(10) == 0
    with (
        serving_app(Starlette(routes=[Route("/{path:path}", answer)])) as api,
        processing(kafka, run.topics, group_id=run.processor.group_id),
        reconciling(
            run.client("reconciler"),
            run.topics,
            {"esign": {"provider": "esign", "poll": {"base_url": api, "token": "t", "window_s": 1}}},
            run.reconcile.group_id,
        ) as reconciler,
    ):
        read(kafka, run.topics.events, codec, "VerificationEvent", at_least=1)

        def settled() -> bool:  # its expectation tombstoned, the fetcher past the event
            key = expectation.key.encode()
            values = [r.value for r in reader.read_all(kafka, run.topics.expected) if r.key == key]
            return bool(values) and values[-1] is None and reconciler.ticks >= 2

        wait_until(settled, 60, "the polled expectation settled and tombstoned")
    run.check(usage, "reconciler")


def _cli(run: Run, kafka: KafkaSettings, role: str, *args: str, **env: str) -> str:
    environment = processor_env(
        kafka,
        run.topics,
        KYCSTREAM_KAFKA__CLIENT_ID=f"acl-{role}",
        KYCSTREAM_PROCESSOR__GROUP_ID=run.processor.group_id,
        **env,
    )
    result = CliRunner().invoke(app, list(args), env=environment)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_operators_commands_use_what_their_user_allows(
    run: Run, usage: Usage, kafka: KafkaSettings, codec: Codec
) -> None:
    _processed(run, kafka, codec)
    _cli(run, kafka, "operator", "replay", "--from-beginning")
    fresh = {r: access.replay_prefix(getattr(run.topics, r)) + "v2" for r in access.TARGET_ROLES}
    into_fresh = [a for r, name in fresh.items() for a in (f"--{r}-topic", name)]
    _cli(run, kafka, "operator", "replay", "--from-beginning", *into_fresh)
    fresher = [a.replace(".v2", ".v3") for a in into_fresh]  # exactly_once: replay's own transactional id
    _cli(
        run,
        kafka,
        "operator",
        "replay",
        "--from-beginning",
        *fresher,
        KYCSTREAM_PROCESSOR__PROCESSING_GUARANTEE="exactly_once",
    )
    _cli(run, kafka, "operator", "redrive")
    _cli(run, kafka, "operator", "tail", "--topic", "events", "--from-beginning", "--count", "1", "--timeout", "10")
    _cli(run, kafka, "operator", "inspect", "esign:acl-1", "--json")
    run.check(usage, "operator")


def test_topics_create_uses_what_the_table_declares(run: Run, usage: Usage, kafka: KafkaSettings) -> None:
    _cli(run, kafka, "topics", "topics", "create")
    run.check(usage, "topics")


def test_the_recorder_sees_a_denied_use(run: Run, usage: Usage, kafka: KafkaSettings, codec: Codec) -> None:
    """The check fails when a user lacks something the role did (here: the gateway reading a topic)."""
    gateway = run.client("gateway")
    list(reader.follow(gateway, run.topics.raw, "beginning", idle_timeout=0.5))
    with pytest.raises(AssertionError, match=r"does not declare.*'topic', 'acl\..*\.raw\.v1', 'Read'"):
        run.check(usage, "gateway")
