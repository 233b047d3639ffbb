"""Replay rebuilds events and state from the raw topic; redrive sends dead letters back through."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from processors.kafka.serde import Codec
from processors.normalizer.runner import Normalizer
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    committed_to_end,
    latest_states,
    processing,
    processor_env,
    produce_raw,
    raw_delivery,
    read,
    unique,
    wait_until,
)

pytestmark = pytest.mark.broker
KYCSTREAM = [sys.executable, "-m", "processors.cli"]


def _esign(i: int, status: str = "COMPLETED") -> bytes:
    return json.dumps(
        {
            "submissionId": f"rp-{i}",
            "status": status,
            "result": "VALID",
            "processedAt": f"2026-05-08T10:{i % 60:02d}:00Z",
        }
    ).encode()


def test_replay_into_the_live_topics_emits_only_what_is_missing(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", _esign(i)) for i in range(30)], codec)
    with processing(kafka, topic_settings):
        read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=30)
    result = subprocess.run(
        [*KYCSTREAM, "replay", "--from-beginning"],
        env=processor_env(kafka, topic_settings),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert b"0 events emitted, 30 already emitted" in result.stderr
    events = read(kafka, topic_settings.events, codec, "VerificationEvent")
    assert len(events) == 30 and len({e["event_id"] for e in events}) == 30


def test_replay_into_fresh_topics_rebuilds_events_and_state(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec
) -> None:
    live, fresh = make_topics(), make_topics()
    deliveries = [raw_delivery("esign", _esign(i)) for i in range(20)]
    deliveries += [raw_delivery("esign", _esign(i, "PARTIALLY_COMPLETED")) for i in range(5)]  # late, never regress
    deliveries += [raw_delivery("esign", _esign(i)) for i in range(20)]  # provider retries
    deliveries += [raw_delivery("esign", b"NumberInt(200)")]
    produce_raw(kafka, live.raw, deliveries, codec)
    env = processor_env(kafka, live)
    args = [
        "--events-topic",
        fresh.events,
        "--state-topic",
        fresh.state,
        "--dedup-topic",
        fresh.dedup,
        "--dlq-topic",
        fresh.dlq,
    ]
    refused = subprocess.run(
        [*KYCSTREAM, "replay", "--from-beginning", "--events-topic", fresh.events],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode == 2 and b"needs a fresh --dedup-topic" in refused.stderr
    result = subprocess.run(
        [*KYCSTREAM, "replay", "--from-beginning", *args], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert b"25 events emitted, 20 already emitted, 0 notices, 1 dead letters" in result.stderr
    events = read(kafka, fresh.events, codec, "VerificationEvent")
    assert Counter(e["status"] for e in events) == {"APPROVED": 20, "PENDING": 5}
    states = latest_states(kafka, fresh.state, codec)
    assert len(states) == 20 and {s["status"] for s in states.values()} == {"APPROVED"}
    assert [d["reason"] for d in read(kafka, fresh.dlq, codec, "DeadLetter")] == ["invalid_json"]
    assert read(kafka, live.events, codec, "VerificationEvent") == [], "the live topics are untouched"


def test_replay_since_a_time_skips_older_deliveries(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    from datetime import UTC, datetime, timedelta

    cut = datetime.now(UTC) - timedelta(minutes=1)
    before, after = (int((cut + timedelta(seconds=s)).timestamp() * 1000) for s in (-60, 1))
    produce_raw(
        kafka, topic_settings.raw, [raw_delivery("esign", _esign(i)) for i in range(10)], codec, timestamp_ms=before
    )
    produce_raw(
        kafka, topic_settings.raw, [raw_delivery("esign", _esign(i)) for i in range(10, 14)], codec, timestamp_ms=after
    )
    result = subprocess.run(
        [*KYCSTREAM, "replay", "--since", cut.strftime("%Y-%m-%dT%H:%M:%S.%f")],
        env=processor_env(kafka, topic_settings),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = read(kafka, topic_settings.events, codec, "VerificationEvent")
    assert sorted(e["verification_id"] for e in events) == ["rp-10", "rp-11", "rp-12", "rp-13"]


def test_redrive_sends_fixed_letters_back_and_keeps_the_rest_with_their_new_reason(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processors.operate.replay import redrive
    from processors.providers import REGISTRY, esign
    from processors.settings import ProcessorSettings

    new_word = json.dumps({"submissionId": "rd-1", "status": "VERIFIED", "result": "VALID"}).encode()
    produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", new_word), raw_delivery("esign", b"not json")], codec)
    with processing(kafka, topic_settings):
        letters = read(kafka, topic_settings.dlq, codec, "DeadLetter", at_least=2)
    assert sorted(d["reason"] for d in letters) == ["invalid_json", "unknown_status"]

    settings = ProcessorSettings(kafka=kafka, topics=topic_settings, processor={"group_id": unique("redrive")})
    assert redrive(settings, dry_run=True) == Counter(
        {"still_failing:invalid_json": 1, "still_failing:unknown_status": 1}
    )

    # A newer normalizer learns the word: the delivery now normalizes.
    original = esign._status
    monkeypatch.setattr(esign, "_status", lambda s, r, c: original("COMPLETED" if s == "VERIFIED" else s, r, c))
    assert REGISTRY["esign"] is esign
    tally = redrive(settings)
    assert tally == Counter({"redriven": 1, "still_failing:invalid_json": 1})
    raw = read(kafka, topic_settings.raw, codec, "RawDelivery")
    assert [r["body"] for r in raw].count(new_word) == 2, "the original delivery is back in the raw topic"
    letters = read(kafka, topic_settings.dlq, codec, "DeadLetter")
    assert Counter(d["reason"] for d in letters) == {"invalid_json": 2, "unknown_status": 1}, "re-appended once"
    assert redrive(settings) == Counter({"still_failing:invalid_json": 1}), "the next run starts after the last"


def test_replay_creates_missing_targets_like_the_live_topics_with_the_raw_partition_count(
    kafka: KafkaSettings, codec: Codec
) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    from processors.kafka import topics

    tag = unique("rt")
    live = TopicSettings(partitions=2, events_retention_ms=3_600_000, **{r: f"{tag}.{r}" for r in topics.ROLES})
    topics.create_all(kafka, live)
    produce_raw(kafka, live.raw, [raw_delivery("esign", _esign(i)) for i in range(6)], codec)
    fresh = {r: f"{tag}.{r}.v2" for r in ("events", "state", "dedup", "dlq")}
    args = [a for r, name in fresh.items() for a in (f"--{r}-topic", name)]
    env = processor_env(kafka, live)
    result = subprocess.run(
        [*KYCSTREAM, "replay", "--from-beginning", *args], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert b"replayed 6 records" in result.stderr

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert {name: len(metadata.topics[name].partitions) for name in fresh.values()} == dict.fromkeys(fresh.values(), 2)
    described = {
        r.name: f.result()
        for r, f in admin.describe_configs([ConfigResource("topic", n) for n in fresh.values()]).items()
    }
    assert described[fresh["events"]]["retention.ms"].value == "3600000", "the live events topic's retention"
    assert described[fresh["state"]]["cleanup.policy"].value == "compact"
    assert len(read(kafka, fresh["events"], codec, "VerificationEvent")) == 6


def test_replay_refuses_before_creating_anything_when_a_target_disagrees(
    topic_settings: TopicSettings, kafka: KafkaSettings
) -> None:
    from confluent_kafka.admin import AdminClient

    from processors.kafka import topics

    tag = unique("disagree")
    wrong = TopicSettings(partitions=5, events=f"{tag}.events")
    topics.create(AdminClient({"bootstrap.servers": kafka.bootstrap_servers}), topics.specs(wrong)[1:2])
    env = processor_env(kafka, topic_settings)
    result = subprocess.run(
        [
            *(*KYCSTREAM, "replay", "--from-beginning", "--events-topic", f"{tag}.events"),
            *("--state-topic", f"{tag}.state", "--dedup-topic", f"{tag}.dedup", "--dlq-topic", f"{tag}.dlq"),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{topic_settings.raw} has 3 partitions, but {tag}.events has 5 partitions".encode() in result.stderr
    names = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).topics
    assert not {f"{tag}.state", f"{tag}.dedup", f"{tag}.dlq"} & set(names), "nothing was created"

    no_dlq = subprocess.run(
        [*KYCSTREAM, "replay", "--from-beginning", "--events-topic", f"{tag}.e2", "--dedup-topic", f"{tag}.d2"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert no_dlq.returncode == 2 and b"needs a fresh --dlq-topic too" in no_dlq.stderr


def test_replay_progress_totals_what_it_reads_and_live_dead_letters_are_not_written_twice(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    from processors.operate.replay import replay
    from processors.settings import ProcessorSettings

    deliveries = [raw_delivery("esign", _esign(i)) for i in range(40)] + [raw_delivery("esign", b"{,}")] * 3
    produce_raw(kafka, topic_settings.raw, deliveries, codec)
    with processing(kafka, topic_settings):
        read(kafka, topic_settings.dlq, codec, "DeadLetter", at_least=3)
        read(kafka, topic_settings.events, codec, "VerificationEvent", at_least=40)
    settings = ProcessorSettings(kafka=kafka, topics=topic_settings, processor={"group_id": unique("rp")})
    calls: list[tuple[int, int]] = []
    tally = replay(settings, None, lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 43), "the total is known before the first record, read to partition EOF"
    assert calls[-1] == (43, 43) and {total for _, total in calls} == {43}
    assert (tally["records"], tally["duplicates"], tally["dead_letters"], tally["dead_letters_held"]) == (43, 40, 3, 3)
    assert len(read(kafka, topic_settings.dlq, codec, "DeadLetter")) == 3


def _consuming(normalizer: Normalizer) -> bool:
    return bool(normalizer.engine.owner.owned)  # a group member with its partitions restored


def test_replay_into_the_live_topics_refuses_while_the_processors_consume(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec
) -> None:
    live, fresh = make_topics(), make_topics()
    produce_raw(kafka, live.raw, [raw_delivery("esign", _esign(i)) for i in range(10)], codec)
    group = unique("live")
    env = processor_env(kafka, live, KYCSTREAM_PROCESSOR__GROUP_ID=group)
    with processing(kafka, live, group_id=group) as normalizer:
        wait_until(lambda: _consuming(normalizer), 30, "the processor consuming its partitions")
        refused = subprocess.run([*KYCSTREAM, "replay", "--from-beginning"], env=env, capture_output=True, timeout=60)
        assert refused.returncode == 2, refused.stderr
        message = refused.stderr.decode()
        assert f"the processors' group {group} is consuming {live.raw}" in message
        assert "scale deployment kycstream-processor --replicas=0" in message and "--while-live" in message
        args = [a for r in ("events", "state", "dedup", "dlq") for a in (f"--{r}-topic", getattr(fresh, r))]
        rebuilt = subprocess.run(
            [*KYCSTREAM, "replay", "--from-beginning", *args], env=env, capture_output=True, timeout=120
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert b"10 events emitted" in rebuilt.stderr
        wait_until(lambda: committed_to_end(kafka, group, live.raw), 30, "the live processor done")
    assert len(read(kafka, live.events, codec, "VerificationEvent")) == 10, "the live topics: the processor's only"
    assert len(read(kafka, fresh.events, codec, "VerificationEvent")) == 10


@pytest.mark.slow
def test_replay_while_live_leaves_what_the_processors_have_not_processed_to_them(
    topic_settings: TopicSettings, kafka: KafkaSettings, codec: Codec
) -> None:
    """The issue's case: a lagging processor (one record a batch) and a replay beside it. With
    --while-live, replay stops at the group's committed offsets, so no delivery becomes two events."""
    count = 3000
    produce_raw(kafka, topic_settings.raw, [raw_delivery("esign", _esign(i)) for i in range(count)], codec)
    group = unique("lagging")
    env = processor_env(kafka, topic_settings, KYCSTREAM_PROCESSOR__GROUP_ID=group)
    with processing(kafka, topic_settings, group_id=group, batch_size=1) as normalizer:
        wait_until(lambda: normalizer.engine.tally["events"] >= 20, 60, "the processor under way")
        result = subprocess.run(
            [*KYCSTREAM, "replay", "--from-beginning", "--while-live"], env=env, capture_output=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        replayed = re.search(rb"replayed (\d+) records.*: (\d+) events emitted", result.stderr)
        assert replayed is not None, result.stderr
        assert 0 < int(replayed[1]) < count, "up to what the processor had committed, no further"
        assert int(replayed[2]) == 0, "what it had committed has its events"
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 180, "the live processor done")
    events = read(kafka, topic_settings.events, codec, "VerificationEvent")
    assert len(events) == count == len({e["idempotency_key"] for e in events}), "one event per result"
    states = latest_states(kafka, topic_settings.state, codec)
    assert len(states) == count and {s["status"] for s in states.values()} == {"APPROVED"}
