"""Processor bench: events/s of the normalizer against a passthrough and a Quix Streams app, same records.

On a fresh embedded broker (Tansu) per phase, the raw topic is pre-filled with N realistic raw
envelopes (RawDelivery, Avro, keyed as the gateway keys them): the golden cases of the five
providers (tests/providers/*/*.json) that make events, each given a unique verification id (and
Xendit a unique webhook-id), the providers in equal shares; ~10% of the records are repeated
deliveries of an earlier one (provider retries: same body, new request id) and ~1% are bad bodies
that go to the DLQ. Then, each reading to partition EOF (never from watermarks: Tansu's
under-report):

  passthrough  confluent-kafka consume -> produce of the same records to another topic, the same
               producer settings as the normalizer (acks=all, idempotence, lz4, linger.ms 5): the
               client's ceiling
  kycstream    processors.normalizer.runner.Engine, driven like `kycstream process` drives it (consume
               500, Engine.process, commit): decode, normalize, dedup against its store, state,
               Avro events / states / dedup changelog / dead letters, produce, commit
  quix         bench/quix_app.py in its own virtualenv (bench/.venv-quix: Quix Streams pins its
               own confluent-kafka): decode, the same pure normalize (processors.pipeline via
               PYTHONPATH), dedup in its RocksDB state store (with its changelog topic), Avro event,
               produce

events/s = raw records handled per second, from the first record consumed to the last partition's
EOF with every output acknowledged.

    .venv/bin/python bench/processor.py [--records 200000] [--skip-quix]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from bench import common
from processors import logs
from processors.avro.records import delivery_to_record
from processors.kafka import config
from processors.kafka.serde import Codec
from processors.model import RawDelivery, VerificationEvent
from processors.pipeline import normalize, routing_id
from processors.providers import REGISTRY
from processors.settings import KafkaSettings, ProcessorSection, ProcessorSettings

GOAL_EVENTS_S = 30_000
GOAL_PASSTHROUGH = 0.40
GOAL_QUIX = 1.5
QUIX_VENV = common.BENCH / ".venv-quix"
DUPLICATES = 0.10
DEAD_LETTERS = 0.01


# --- the records ---------------------------------------------------------------------------------


@dataclass
class Template:
    provider: str
    text: str  # the body, with the verification id to replace
    vid: str
    headers: dict[str, str]


def templates() -> tuple[dict[str, list[Template]], list[tuple[str, bytes]]]:
    """Golden cases that make events (per provider, verification id replaceable) and bad bodies."""
    from tests import cases

    good: dict[str, list[Template]] = {}
    bad: list[tuple[str, bytes]] = []
    now = datetime.now(UTC)
    for case in cases.load():
        kept = {k.lower(): v for k, v in case.headers.items() if k.lower() in REGISTRY[case.provider].HEADERS}
        headers = {"content-type": "application/json", "user-agent": f"{case.provider}-webhooks/1.0", **kept}
        if case.dead_letter:
            bad.append((case.provider, case.body))
            continue
        outcome = normalize(RawDelivery("x", case.provider, case.provider, "POST", now, case.body, headers))
        if not isinstance(outcome, VerificationEvent) or len(outcome.verification_id) < 6:
            continue
        text = case.body.decode()
        if outcome.verification_id not in text:
            continue
        template = Template(case.provider, text, outcome.verification_id, headers)
        body, hdrs, vid = variant(template, 0)
        check = normalize(RawDelivery("x", case.provider, case.provider, "POST", now, body, hdrs))
        if isinstance(check, VerificationEvent) and check.verification_id == vid:
            good.setdefault(case.provider, []).append(template)
    return good, bad


def variant(t: Template, n: int) -> tuple[bytes, dict[str, str], str]:
    vid = f"{t.vid}-{n:x}"
    headers = dict(t.headers)
    if "webhook-id" in headers or t.provider == "xendit":
        headers["webhook-id"] = f"wh-bench-{n:x}"
    return t.text.replace(t.vid, vid).encode(), headers, vid


def records(n: int, seed: int = 7) -> tuple[list[RawDelivery], Counter[str]]:
    rng = random.Random(seed)
    good, bad = templates()
    providers = sorted(good)
    now = datetime.now(UTC)
    out: list[RawDelivery] = []
    mix: Counter[str] = Counter()
    for i in range(n):
        roll = rng.random()
        if roll < DUPLICATES and out:
            first = out[rng.randrange(max(0, len(out) - 5000), len(out))]  # a retry of a recent delivery
            d = RawDelivery(str(uuid.uuid4()), first.source, first.provider, "POST", now, first.body, first.headers)
            mix["duplicate"] += 1
        elif roll < DUPLICATES + DEAD_LETTERS:
            provider, body = bad[rng.randrange(len(bad))]
            d = RawDelivery(
                str(uuid.uuid4()), provider, provider, "POST", now, body, {"content-type": "application/json"}
            )
            mix["bad body"] += 1
        else:
            provider = providers[i % len(providers)]
            t = good[provider][rng.randrange(len(good[provider]))]
            body, headers, _ = variant(t, i)
            d = RawDelivery(
                str(uuid.uuid4()), provider, provider, "POST", now, body, headers, "127.0.0.1", "application/json"
            )
            mix[provider] += 1
        out.append(d)
    return out, mix


def prefill(bootstrap: str, topic: str, deliveries: list[RawDelivery], codec: Codec) -> float:
    """Write the envelopes as the gateway does (same key, same encoding); returns the average value size."""
    producer = Producer(config.producer(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 20}))
    size = 0
    for d in deliveries:
        value = codec.encode("RawDelivery", delivery_to_record(d))
        size += len(value)
        key = routing_id(d.provider, d.body) or d.request_id
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0, "prefill: records left undelivered"
    return size / max(1, len(deliveries))


# --- the runs ------------------------------------------------------------------------------------


def _eof_consumer(bootstrap: str, group: str, topic: str, partitions: int) -> Consumer:
    consumer = Consumer(
        config.consumer(KafkaSettings(bootstrap_servers=bootstrap), group, **{"enable.partition.eof": True})
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    return consumer


def run_passthrough(bootstrap: str, topics: Any, expected: int) -> dict[str, Any]:
    consumer = _eof_consumer(bootstrap, f"bench-pass-{uuid.uuid4().hex[:6]}", topics.raw, topics.partitions)
    producer = Producer(config.producer(KafkaSettings(bootstrap_servers=bootstrap), **{"linger.ms": 5}))
    eof: set[int] = set()
    seen = 0
    started = None
    while len(eof) < topics.partitions:
        for msg in consumer.consume(500, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                continue
            if started is None:
                started = time.perf_counter()
            seen += 1
            while True:
                try:
                    producer.produce(topics.events, value=msg.value(), key=msg.key(), partition=msg.partition())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    assert seen == expected, f"passthrough read {seen} records, expected {expected}"
    return {"records": seen, "seconds": elapsed, "per_s": seen / elapsed}


def run_engine(bootstrap: str, topics: Any, expected: int, **section: Any) -> dict[str, Any]:
    from processors.normalizer.runner import Engine

    settings = ProcessorSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        topics=topics,
        processor=ProcessorSection(group_id=f"bench-engine-{uuid.uuid4().hex[:6]}", metrics_port=None, **section),
    )
    # The bench's own records (every phase's deliveries) are not the processor's heap: out of the
    # collector's way, as `kycstream process` has only its own objects (the Quix app runs apart).
    gc.collect()
    gc.freeze()
    engine = Engine(settings)
    engine.check_partitions()
    p = settings.processor
    consumer = Consumer(config.consumer(settings.kafka, p.group_id, **{"session.timeout.ms": p.session_timeout_ms}))

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        engine.restore([tp.partition for tp in partitions])

    consumer.subscribe([topics.raw], on_assign=on_assign)
    stop = threading.Event()
    eof: set[int] = set()
    seen = 0
    started = None
    cpu = 0.0
    joined = time.perf_counter()
    while len(eof) < topics.partitions:
        messages = consumer.consume(p.batch_size, p.poll_timeout_s)
        if not messages:
            continue
        for msg in messages:
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
            elif err is None:
                seen += 1
        if started is None and seen:
            started = time.perf_counter()
            cpu = time.process_time()
        if offsets := engine.process(messages, consumer, stop):  # as Normalizer.run: process, then commit
            consumer.commit(offsets=offsets, asynchronous=False)
        engine.expire()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    cpu = time.process_time() - cpu
    total = time.perf_counter() - joined
    tally = dict(engine.tally)
    consumer.close()
    engine.close()
    assert seen == expected, f"engine read {seen} records, expected {expected}"
    return {
        "records": seen,
        "seconds": elapsed,
        "per_s": seen / elapsed,
        "cpu_s": cpu,  # the process's CPU time (all threads, librdkafka's included) while it ran
        "with_join_s": total,
        "tally": tally,
    }


def quix_python() -> Path | None:
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        print("creating bench/.venv-quix (quixstreams, orjson, fastavro)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import quixstreams, orjson, fastavro"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "quixstreams", "orjson", "fastavro"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        probe = subprocess.run([str(python), "-c", "import quixstreams, orjson, fastavro"], capture_output=True)
    return python if probe.returncode == 0 else None


def run_quix(python: Path, bootstrap: str, topics: Any, expected: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            *(str(python), str(common.BENCH / "quix_app.py"), "--bootstrap", bootstrap, "--raw", topics.raw),
            *("--events", topics.events, "--records", str(expected), "--partitions", str(topics.partitions)),
        ],
        capture_output=True,
        text=True,
        cwd=common.ROOT,
        env={"PYTHONPATH": str(common.ROOT), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    (common.OUT / "quix_app.log").write_text(out.stderr)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"quix app failed ({out.returncode}); see bench/.out/quix_app.log:\n{out.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def phase(name: str, records_: list[RawDelivery], codec: Codec, partitions: int, run: Any) -> dict[str, Any]:
    """A fresh broker per phase (Tansu is memory-only and keeps every byte ~10x)."""
    with common.broker() as running, common.quiet(f"processor-{name}"):  # its logs and librdkafka's: a file
        topics = common.make_topics(running.bootstrap_servers, name, partitions)
        t = time.perf_counter()
        size = prefill(running.bootstrap_servers, topics.raw, records_, codec)
        fill = time.perf_counter() - t
        result = run(running.bootstrap_servers, topics)
        result["value_bytes"] = size
        result["broker_rss_mb"] = round(common.rss_mb(running.process.pid))
    cpu = f", CPU {result['cpu_s'] / result['seconds']:.0%} of one core" if "cpu_s" in result else ""
    print(
        f"  {name:12} {result['per_s']:9,.0f} records/s  "
        f"({result['records']:,} in {result['seconds']:.2f} s{cpu}; prefill {fill:.1f} s)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a processor setting for the Engine run"
    )
    parser.add_argument("--only", choices=("passthrough", "kycstream", "quix"), action="append")
    args = parser.parse_args()

    print(f"== processor: {args.records:,} raw records, {args.partitions} partitions, one process each")
    common.print_machine()
    t = time.perf_counter()
    deliveries, mix = records(args.records)
    print(f"records: {dict(mix)} (built in {time.perf_counter() - t:.1f} s)", flush=True)
    codec = Codec()
    logs.configure("INFO", "json")  # as kycstream process logs; each phase's stderr goes to bench/.out/
    only = set(args.only or ("passthrough", "kycstream", "quix"))
    section = dict(item.split("=", 1) for item in args.set)  # validated by ProcessorSection
    results: dict[str, dict[str, Any]] = {}
    n = len(deliveries)
    if "passthrough" in only:
        results["passthrough"] = phase(
            "passthrough", deliveries, codec, args.partitions, lambda b, tp: run_passthrough(b, tp, n)
        )
    if "kycstream" in only:
        results["kycstream"] = phase(
            "kycstream", deliveries, codec, args.partitions, lambda b, tp: run_engine(b, tp, n, **section)
        )
    quix_note = ""
    if "quix" in only and not args.skip_quix:
        python = quix_python()
        if python is None:
            quix_note = "Quix Streams could not be installed in bench/.venv-quix: not measured"
        else:
            results["quix"] = phase(
                "quix", deliveries, codec, args.partitions, lambda b, tp: run_quix(python, b, tp, n)
            )

    ceiling = results.get("passthrough", {}).get("per_s")
    quix = results.get("quix", {}).get("per_s")
    labels = {
        "passthrough": "confluent-kafka consume→produce (ceiling)",
        "kycstream": "kycstream Engine: normalize+dedup+state+Avro",
        "quix": "Quix Streams: normalize+dedup(state)+Avro",
    }
    rows = []
    for name in ("passthrough", "kycstream", "quix"):
        if name in results:
            r = results[name]
            rows.append(
                [
                    labels[name],
                    f"{r['per_s']:,.0f}",
                    f"{r['records']:,}",
                    f"{r['seconds']:.2f}",
                    f"{r['per_s'] / ceiling:.2f}" if ceiling else "-",
                    f"{r['per_s'] / quix:.2f}" if quix else "-",
                ]
            )
    print()
    avg = results.get("kycstream", results.get("passthrough", {})).get("value_bytes", 0)
    print(f"processor, {n:,} raw records (avg envelope {avg:,.0f} B), {args.partitions} partitions, one process:")
    print(common.table(["pipeline", "records/s", "records", "seconds", "× passthrough", "× quix"], rows))
    if "kycstream" in results:
        print(f"kycstream tally: {results['kycstream']['tally']}")
    targets = []
    eng = results.get("kycstream")
    if eng:
        targets.append(common.Target("processor events/s per process", eng["per_s"], GOAL_EVENTS_S, "/s"))
        if ceiling:
            targets.append(
                common.Target(
                    "processor vs confluent-kafka passthrough",
                    eng["per_s"] / ceiling,
                    GOAL_PASSTHROUGH,
                    "×",
                    fmt="{:.2f}",
                )
            )
        if quix:
            targets.append(
                common.Target("processor vs Quix Streams app", eng["per_s"] / quix, GOAL_QUIX, "×", fmt="{:.2f}")
            )
    common.save(
        "processor", {"records": n, "mix": dict(mix), "results": results, "targets": [t.line() for t in targets]}
    )
    common.finish(targets, [quix_note] if quix_note else [])


if __name__ == "__main__":
    main()
