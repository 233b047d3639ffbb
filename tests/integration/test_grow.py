"""Partitions grow by the runbook's path (docs/runbook.md, "Growing partitions"), under load: the
gateway keeps taking deliveries (new results and repeats of earlier ones) while the new set is
filled, the gateway switched, the processors stopped, the run finished and the processors started
on the new set. Afterwards every result has one event, every verification one state in the
partition its key belongs to now, and every idempotency key its dedup record beside it."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from gateway.settings import GatewaySettings
from processors.avro.records import state_to_record
from processors.kafka import config, embedded, reader
from processors.kafka.partitioner import partition_for
from processors.kafka.serde import Codec
from processors.model import VerificationState, VerificationStatus
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    DEV_SECRET,
    committed_to_end,
    dev_sources,
    latest_states,
    processing,
    processor_env,
    produce_raw,
    raw_delivery,
    serving,
    unique,
    wait_until,
)

pytestmark = pytest.mark.broker
KYCSTREAM = [sys.executable, "-m", "processors.cli"]
ESIGN_AUTH = {"authorization": f"Bearer {DEV_SECRET}"}


def _result(verification: int, step: int) -> bytes:
    """esign's callback: step 0 the certificate not ready yet (PENDING), step 1 the decision (APPROVED)."""
    status = "PARTIALLY_COMPLETED" if step == 0 else "COMPLETED"
    return json.dumps(
        {
            "submissionId": f"grow-{verification}",
            "status": status,
            "result": "VALID",
            "processedAt": f"2026-05-08T10:{verification % 60:02d}:{step:02d}Z",
        }
    ).encode()


class Provider:
    """A provider calling the gateway back: new results, repeats of results already accepted, and a
    retry of whatever was not answered 200 (while the gateway is switched)."""

    def __init__(self, url: str) -> None:
        self.url = url  # the gateway's address: a switch changes it, as a rolling restart behind a service
        self.accepted: list[tuple[int, int]] = []  # (verification, step) of every 200
        self._next = 0
        self._stop = threading.Event()
        self._rng = random.Random(28)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Provider:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def more(self, count: int) -> None:
        """Wait until `count` more deliveries are accepted."""
        wanted = len(self.accepted) + count
        wait_until(lambda: len(self.accepted) >= wanted, 30, f"{count} more deliveries accepted at {self.url}")

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                if self.accepted and self._rng.random() < 0.3:
                    result = self._rng.choice(self.accepted)  # a repeat of an earlier result
                else:
                    result, self._next = (self._next // 2, self._next % 2), self._next + 1
                self._deliver(client, result)
                self._stop.wait(0.005)  # the provider's pace: a few hundred deliveries a second at most

    def _deliver(self, client: httpx.Client, result: tuple[int, int]) -> None:
        while not self._stop.is_set():  # as a provider retries: until it is answered 200
            try:
                response = client.put(f"{self.url}/webhooks/esign", content=_result(*result), headers=ESIGN_AUTH)
                if response.status_code == 200:
                    self.accepted.append(result)
                    return
            except httpx.TransportError:
                pass
            self._stop.wait(0.05)  # the provider's retry backoff


@contextmanager
def _gateway(kafka: KafkaSettings, topics: TopicSettings) -> Iterator[str]:
    port = embedded.free_port()
    settings = GatewaySettings(
        kafka=kafka, topics=topics, sources=dev_sources(), gateway={"host": "127.0.0.1", "port": port}
    )
    with serving(settings) as url:
        yield url


def _grow(kafka: KafkaSettings, live: TopicSettings, group: str, to: int) -> subprocess.CompletedProcess[str]:
    """`kycstream partitions grow --to N`, as the runbook runs it."""
    env = processor_env(kafka, live, KYCSTREAM_PROCESSOR__GROUP_ID=group)
    run = subprocess.run(
        [*KYCSTREAM, "partitions", "grow", "--to", str(to)], env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr
    return run


def _switched(live: TopicSettings, printed: str) -> TopicSettings:
    """The topics the finished run printed to switch to (KYCSTREAM_TOPICS__ROLE=name lines)."""
    lines = [line.removeprefix("KYCSTREAM_TOPICS__") for line in printed.splitlines() if "=" in line]
    return TopicSettings.model_validate(live.model_dump() | dict(line.lower().split("=", 1) for line in lines))


@pytest.mark.parametrize("stores", ["memory", pytest.param("rocksdb", marks=pytest.mark.slow)])
def test_partitions_grown_from_3_to_6_under_load_keep_one_event_per_result_and_one_state_per_verification(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec, stores: str, tmp_path: Path
) -> None:
    """`stores`: the processors' (rocksdb as deployed: the new set's stores are new directories)."""
    live = make_topics(3)
    group = unique("grow-processor")
    on_disk = {"dedup_store": "rocksdb", "state_store": "rocksdb", "state_dir": tmp_path}
    store = on_disk if stores == "rocksdb" else {}
    with ExitStack() as old_gateway, ExitStack() as old_processors:
        old_processors.enter_context(processing(kafka, live, group_id=group, **store))
        with Provider(old_gateway.enter_context(_gateway(kafka, live))) as provider:
            provider.more(40)
            # 1. The new set filled while everything runs on the live one: not finished yet.
            first = _grow(kafka, live, group, 6)
            assert "not finished" in first.stderr and "KYCSTREAM_TOPICS__" not in first.stdout, first.stderr
            new_raw = live.raw + ".p6"
            # 2. The gateway switched to the new raw topic.
            with ExitStack() as new_gateway:
                provider.url = new_gateway.enter_context(_gateway(kafka, live.model_copy(update={"raw": new_raw})))
                old_gateway.close()
                provider.more(20)
                # 3. The processors stopped, deliveries still arriving.
                old_processors.close()
                provider.more(10)
                # 4. Run again: finished, with the topics to switch to.
                last = _grow(kafka, live, group, 6)
                grown = _switched(live, last.stdout)
                assert grown.raw == new_raw and "finished" in last.stderr, last.stderr
                # 5. The processors started on the new set go on where the replay stopped.
                with processing(kafka, grown, group_id=group, **store):
                    provider.more(30)
                    provider.stop()
                    wait_until(lambda: committed_to_end(kafka, group, grown.raw), 60, f"{group} through {grown.raw}")
    _assert_one_event_per_result_and_one_state_per_verification(kafka, codec, grown, set(provider.accepted))


def _assert_one_event_per_result_and_one_state_per_verification(
    kafka: KafkaSettings, codec: Codec, grown: TopicSettings, accepted: set[tuple[int, int]]
) -> None:
    events = [
        (r.partition, codec.decode("VerificationEvent", r.value or b"")) for r in reader.read_all(kafka, grown.events)
    ]
    per_result = Counter((e["verification_id"], e["status"]) for _, e in events)
    statuses = ("PENDING", "APPROVED")
    wanted = Counter((f"grow-{v}", statuses[step]) for v, step in accepted)
    assert per_result == wanted, "one event per result accepted, none lost"
    misplaced = [e for p, e in events if p != partition_for(f"esign:{e['verification_id']}".encode(), 6)]
    assert misplaced == [], "every event in the partition its key belongs to now"

    placed: dict[str, set[int]] = {}
    table: dict[str, dict[str, object]] = {}
    for r in reader.read_all(kafka, grown.state):
        key = (r.key or b"").decode()
        placed.setdefault(key, set()).add(r.partition)
        table[key] = codec.decode("VerificationState", r.value or b"")
    assert {k: ps for k, ps in placed.items() if ps != {partition_for(k.encode(), 6)}} == {}
    steps: dict[str, set[int]] = {}
    for v, step in accepted:
        steps.setdefault(f"esign:grow-{v}", set()).add(step)
    assert {k: (s["status"], s["event_count"]) for k, s in table.items()} == {
        k: (statuses[max(done)], len(done)) for k, done in steps.items()
    }, "one state per verification, every result counted once"

    partition_of = {e["idempotency_key"]: p for p, e in events}
    dedup = [(r.partition, codec.decode("DedupRecord", r.value or b"")) for r in reader.read_all(kafka, grown.dedup)]
    assert {d["idempotency_key"]: p for p, d in dedup} == partition_of, "each key's dedup record beside its event"


def test_states_whose_deliveries_left_the_raw_topic_are_carried_into_the_grown_set(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec
) -> None:
    """Retention took the raw topic's oldest deliveries: the live state table still holds their
    decisions, and the grown set keeps them (one record per verification, in its key's partition)."""
    live = make_topics(3)
    # esign:gone-1: nothing left in the raw topic; esign:gone-2: only a late PENDING after its decision.
    produce_raw(kafka, live.raw, [raw_delivery("esign", _result(2, 0).replace(b"grow-2", b"gone-2"))], codec)
    when = datetime(2026, 5, 1, tzinfo=UTC)
    producer = Producer(config.producer(kafka))
    for vid in ("gone-1", "gone-2"):
        decided = VerificationState(
            f"esign:{vid}", "esign", vid, VerificationStatus.APPROVED, "e1", when, when, decided_at=when, event_count=3
        )
        decided = dataclasses.replace(decided, raw_offset=7)  # an offset of the live raw topic: meaningless now
        value = codec.encode("VerificationState", state_to_record(decided), live.state)
        producer.produce(live.state, key=decided.key.encode(), value=value)
    assert producer.flush(10) == 0

    grown = _switched(live, _grow(kafka, live, unique("grow-idle"), 6).stdout)  # no processor runs: finished

    placed: dict[str, set[int]] = {}
    for r in reader.read_all(kafka, grown.state):
        placed.setdefault((r.key or b"").decode(), set()).add(r.partition)
    assert placed == {k: {partition_for(k.encode(), 6)} for k in ("esign:gone-1", "esign:gone-2")}
    states = latest_states(kafka, grown.state, codec)
    table = {k: (s["status"], s["event_count"], s["raw_offset"]) for k, s in states.items()}
    assert table == {"esign:gone-1": ("APPROVED", 3, -1), "esign:gone-2": ("APPROVED", 3, 0)}
