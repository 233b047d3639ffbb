"""bench-restore: how long restoring a partition's dedup store from its changelog takes, and what it holds.

Starts the embedded broker (Tansu) on a free port, creates a 1-partition dedup topic, produces N
DedupRecords (Avro, keyed by realistic ~80-char idempotency keys, expiries spread over the 7-day
window), then measures in the same run:

  baseline   the same records read raw to partition EOF with a confluent-kafka Consumer (no decoding)
  restore    processors.normalizer.recovery.restore into a MemoryDedupStore, as Engine.restore calls it
             (dedup and an empty state partition read together; recovery.restore_dedup on versions
             before it, where the dedup changelog was read alone)

Memory of the restored store is measured with tracemalloc (Python allocations still held after a
second, traced restore: the store; librdkafka's buffers are not Python allocations and are not
counted) and, as a cross-check, as the RSS delta around the timed restore (after gc and glibc's
malloc_trim, the consumer closed: allocator slack included). A breakdown without Kafka shows where the
per-record time goes.

    .venv/bin/python bench/dedup_restore.py            # 1,000,000 keys
    .venv/bin/python bench/dedup_restore.py --keys 100000
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition, libversion
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processors.avro.records import dedup_from_record, dedup_to_record

try:
    from processors.avro.dedupread import expiry_reader
except ImportError:  # before it
    expiry_reader = None  # type: ignore[assignment]
from processors.dedup import MemoryDedupStore
from processors.kafka import config, embedded
from processors.kafka.serde import Codec
from processors.model import DedupRecord
from processors.normalizer import recovery
from processors.pipeline import event_id_for
from processors.settings import KafkaSettings

GOAL_SECONDS = 8.0  # issue 17
GOAL_MB = 128.0
WINDOW = timedelta(days=7)
TOPIC = "bench.kyc.dedup.v1"
STATE_TOPIC = "bench.kyc.state.v1"  # empty: restore reads it alongside the dedup changelog
TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}
_ESIGN = [("COMPLETED", "VALID"), ("COMPLETED", "INVALID"), ("PARTIALLY_COMPLETED", "VALID"), ("ERROR", "INVALID")]


@dataclass
class Row:
    name: str
    seconds: float
    records: int
    note: str = ""


def trimmed_rss_mb() -> float:
    """RSS after a full collection and glibc's malloc_trim: freed memory handed back, what is left is held."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: plain RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def idempotency_key(rng: random.Random, at: datetime) -> str:
    """Like esign's: provider:submissionId:status:result:processedAt (~80 chars)."""
    status, result = rng.choice(_ESIGN)
    submission = uuid.UUID(int=rng.getrandbits(128), version=4)
    return f"esign:{submission}:{status}:{result}:{at:%Y-%m-%dT%H:%M:%SZ}"


def records(n: int, now: datetime, seed: int = 7) -> Iterator[tuple[str, DedupRecord]]:
    """Keys first seen over the last 7 days (so all still live at `now`), one record each."""
    rng = random.Random(seed)
    for i in range(n):
        first_seen = now - timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() - 3600))
        key = idempotency_key(rng, first_seen - timedelta(seconds=rng.uniform(0, 30)))
        yield key, DedupRecord(key, event_id_for(key), first_seen, first_seen + WINDOW, events_offset=i)


def create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    futures = admin.create_topics([NewTopic(name, 1, 1, config=compacted) for name in names])
    for future in futures.values():
        future.result()


def produce(kafka: KafkaSettings, codec: Codec, n: int, now: datetime) -> tuple[list[bytes], list[bytes]]:
    """Produce n records; returns the keys and encoded values (kept for the breakdown)."""
    producer = Producer(
        config.producer(
            kafka,
            **{
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "batch.num.messages": 100_000,
                "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "compression.type": "lz4",
            },
        )
    )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    keys: list[bytes] = []
    values: list[bytes] = []
    for i, (key, record) in enumerate(records(n, now)):
        raw_key = key.encode()
        value = codec.encode("DedupRecord", dedup_to_record(record), TOPIC)
        keys.append(raw_key)
        values.append(value)
        while True:
            try:
                producer.produce(TOPIC, key=raw_key, value=value, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise SystemExit(f"produce failed: {left} undelivered, {failures[:3]}")
    return keys, values


def new_consumer(kafka: KafkaSettings, group: str, overrides: dict[str, str]) -> Consumer:
    """The restoring consumer's settings (recovery.RESTORE_CONSUMER, where this version has them) for
    both the baseline and the restore, then --consumer's."""
    restore_conf = getattr(recovery, "RESTORE_CONSUMER", {"enable.partition.eof": True})
    return Consumer(config.consumer(kafka, group, **{**restore_conf, **overrides}))


def read_raw(kafka: KafkaSettings, overrides: dict[str, str]) -> tuple[float, int, int]:
    """Baseline: the same consume loop as recovery's reader, touching key and value only."""
    consumer = new_consumer(kafka, f"bench-raw-{uuid.uuid4().hex[:8]}", overrides)
    try:
        started = time.perf_counter()
        consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        count = size = 0
        done = False
        while not done:
            for msg in consumer.consume(10_000, 0.5):
                error = msg.error()
                if error is None:
                    count += 1
                    size += len(msg.key() or b"") + len(msg.value() or b"")
                elif error.code() == KafkaError._PARTITION_EOF:
                    done = True
                    break
                else:
                    raise SystemExit(f"read failed: {error.str()}")
        elapsed = time.perf_counter() - started
        consumer.unassign()
    finally:
        consumer.close()
    return elapsed, count, size


def restore(
    kafka: KafkaSettings, codec: Codec, now: datetime, overrides: dict[str, str]
) -> tuple[float, recovery.PartitionStores]:
    consumer = new_consumer(kafka, f"bench-restore-{uuid.uuid4().hex[:8]}", overrides)
    stores = recovery.PartitionStores(0, MemoryDedupStore())
    legacy = getattr(recovery, "restore_dedup", None)
    try:
        started = time.perf_counter()
        if legacy is None:
            recovery.restore(consumer, codec, TOPIC, STATE_TOPIC, {0: stores}, now, 3600)
        else:
            legacy(consumer, codec, TOPIC, stores, now, 3600)
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    return elapsed, stores


def traced_store_mb(
    kafka: KafkaSettings, codec: Codec, now: datetime, overrides: dict[str, str]
) -> tuple[float, float, int]:
    """(held MB, peak MB, keys): Python memory still allocated after a restore = the store."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _, stores = restore(kafka, codec, now, overrides)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    keys = len(stores.dedup)
    stores.dedup.close()
    return (held - before) / 2**20, (peak - before) / 2**20, keys


def best_of(repeats: int, step: Callable[[], object]) -> float:
    """The fastest of `repeats` runs: the machine is shared, the minimum is the least disturbed."""
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def breakdown(codec: Codec, values: list[bytes], keys: list[bytes], repeats: int = 2) -> list[Row]:
    """Where restore's per-record time goes, without Kafka (same values, already in memory)."""
    n = len(values)
    decode: Callable[..., dict[str, Any]] = codec.decode
    schema = codec.schema_json("DedupRecord")
    writer = fastavro.parse_schema(schema)
    plain_longs = fastavro.parse_schema(
        {**schema, "fields": [f if f["type"] != TIMESTAMP else {**f, "type": "long"} for f in schema["fields"]]}
    )
    expiries = [_expires_and_offset(v)[0] // 1000 for v in values]

    def add_all() -> None:
        store = MemoryDedupStore()
        if hasattr(store, "add_utf8"):  # the record keys' bytes as they are, as restore adds them
            for k, e in zip(keys, expiries, strict=True):
                store.add_utf8(k, e)
        else:
            for k, e in zip(keys, expiries, strict=True):
                store.add(k.decode(), e)
        store.close()

    def each(fn: Callable[[bytes], object]) -> Callable[[], object]:
        return lambda: deque(map(fn, values), maxlen=0)  # results dropped at once, as restore does

    steps: list[tuple[str, str, Callable[[], object]]] = [
        ("Codec.decode", "", each(lambda v: decode("DedupRecord", v, TOPIC))),
        (
            "Codec.decode + dedup_from_record + timestamp()",
            "= restore's decode",
            each(lambda v: int(dedup_from_record(decode("DedupRecord", v, TOPIC)).expires_at.timestamp())),
        ),
        ("MemoryDedupStore.add_utf8 (or add + decode)", "= restore's store", add_all),
        (
            "fastavro, writer schema only",
            "candidate",
            each(lambda v: fastavro.schemaless_reader(io.BytesIO(v[10:]), writer, None)),
        ),
        (
            "fastavro, reader schema with plain longs",
            "candidate",
            each(lambda v: fastavro.schemaless_reader(io.BytesIO(v[10:]), writer, plain_longs)),
        ),
        ("hand-rolled expires/offset decode", "candidate", each(_expires_and_offset)),
    ]
    if expiry_reader is not None:
        steps.insert(2, ("dedupread.expiry_reader", "= restore's decode", each(expiry_reader(codec))))
        steps[1] = (steps[1][0], "", steps[1][2])  # restore's decode only for records it does not take
    return [Row(name, best_of(repeats, step), n, note) for name, note, step in steps]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _expires_and_offset(value: bytes) -> tuple[int, int]:
    """Only what a restore needs from a current-schema DedupRecord: expires_at (ms) and events_offset."""
    length, pos = _varint(value, 10)  # idempotency_key (the record key has it too)
    length, pos = _varint(value, pos + length)  # event_id
    _, pos = _varint(value, pos + length)  # first_seen_at
    expires_ms, pos = _varint(value, pos)
    events_offset, _ = _varint(value, pos)
    return expires_ms, events_offset


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"nproc {os.cpu_count()} | CPU {model} | RAM {mem_kb / 2**20:.1f} GiB | "
        f"Python {platform.python_version()} | {platform.platform()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="records to produce and restore")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-step timing without Kafka")
    parser.add_argument(
        "--consumer",
        action="append",
        default=[],
        metavar="PROP=VALUE",
        help="librdkafka override for both consumers, e.g. fetch.wait.max.ms=10 (as Engine's restorer)",
    )
    args = parser.parse_args(argv)
    n = args.keys
    overrides = dict(item.split("=", 1) for item in args.consumer)

    print(f"machine: {machine()}")
    print(f"confluent-kafka {metadata.version('confluent-kafka')} / librdkafka {libversion()[0]}")
    print(f"load average at start: {load()}; consumer overrides: {overrides or 'none'}")
    now = datetime.now(UTC).replace(microsecond=0)
    codec = Codec()
    broker = embedded.start("127.0.0.1", embedded.free_port())
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        create_topics(broker.bootstrap_servers, TOPIC, STATE_TOPIC)
        started = time.perf_counter()
        keys, values = produce(kafka, codec, n, now)
        produce_s = time.perf_counter() - started
        key_avg, value_avg = sum(map(len, keys)) / n, sum(map(len, values)) / n
        print(f"produced {n:,} records in {produce_s:.1f}s (key {key_avg:.0f} B, value {value_avg:.0f} B on average)")

        raw_s, raw_count, _ = read_raw(kafka, overrides)
        assert raw_count == n, f"baseline read {raw_count} of {n}"

        rss_before = trimmed_rss_mb()
        restore_s, stores = restore(kafka, codec, now, overrides)
        rss_delta = trimmed_rss_mb() - rss_before  # the consumer is closed by then
        assert len(stores.dedup) == n, f"restored {len(stores.dedup)} of {n}"
        assert stores.repair_from == n - 1 and not stores.expired
        stores.dedup.close()
        del stores
        gc.collect()

        raw2_s, raw2_count, _ = read_raw(kafka, overrides)  # again after: the broker side is warm either way
        assert raw2_count == n

        held_mb, peak_mb, traced_keys = traced_store_mb(kafka, codec, now, overrides)
        assert traced_keys == n

        broker_mb = process_rss_mb(broker.process.pid)
        parts = [] if args.no_breakdown else breakdown(codec, values, keys)
    finally:
        broker.stop()

    base = min(raw_s, raw2_s)
    rows = [
        Row("(a) baseline: raw consume to EOF", raw_s, n, "1st"),
        Row("(a) baseline: raw consume to EOF", raw2_s, n, "2nd"),
        Row("(b) restore -> MemoryDedupStore", restore_s, n, f"{restore_s / base:.1f}x baseline"),
        *parts,
    ]
    print()
    print(f"{'step':<46} {'seconds':>8} {'records/s':>11} {'us/record':>10}  note")
    print("-" * 96)
    for row in rows:
        rate = row.records / row.seconds if row.seconds else float("inf")
        print(f"{row.name:<46} {row.seconds:>8.2f} {rate:>11,.0f} {row.seconds / row.records * 1e6:>10.2f}  {row.note}")
    print()
    print(
        f"store memory, {n:,} keys: {held_mb:.1f} MB held (tracemalloc, {held_mb * 2**20 / n:.0f} B/key; "
        f"peak during restore {peak_mb:.1f} MB); RSS delta around the timed restore {rss_delta:.1f} MB "
        "(after malloc_trim); "
        f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(f"embedded broker (Tansu) RSS holding the topic: {broker_mb:.0f} MB; load average at end: {load()}")
    label = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n:,}"
    print(
        f"target: dedup restore {label} keys {restore_s:.1f}s (goal < {GOAL_SECONDS:g}s) "
        f"{'met' if restore_s < GOAL_SECONDS else 'not met'}"
    )
    print(
        f"target: dedup store memory {label} keys {held_mb:.0f} MB (goal < {GOAL_MB:g} MB) "
        f"{'met' if held_mb < GOAL_MB else 'not met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
