"""The Engine's own cost per raw record, without a broker: CPU time, and instructions (cachegrind).

`Engine.process` handles the processor bench's records (bench/processor.py: five providers, 10%
re-deliveries, 1% bad bodies) in batches of 500, in process, exactly as `kycstream process` calls
it; its Kafka clients are replaced by a producer that keeps what it is given and acknowledges it at
`flush()` with real offsets (delivery reports included), so what is measured is kycstream's Python
per record (decode, normalize, dedup, state, Avro, produce calls, reports, batch bookkeeping) and
not the broker, the network or librdkafka's threads.

Two figures:
  CPU µs per record   process time over the records, the best of --runs (a shared machine's
                      timings move ±10%: the best run is the least disturbed)
  instructions/record with valgrind installed (--instructions): cachegrind's instruction count of
                      the same run on 2,000 and on 6,000 records (the same 6,000 built, so set-up
                      cancels out), divided by the 4,000 between: a figure that does not depend on
                      the machine's load, for comparing one change against the commit before it

    .venv/bin/python bench/engine_cost.py [--records 60000] [--runs 3] [--instructions]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

BATCH = 500
_ON_DISK: dict[str, Any] = {"dedup_store": "rocksdb", "state_store": "rocksdb"}


class _Message:
    """What Engine.process reads of a confluent_kafka.Message."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_topic", "_value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._topic, self._partition, self._offset, self._key, self._value = topic, partition, offset, key, value
        self._headers = None

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return self._headers


class _Producer:
    """Keeps what is produced; flush() acknowledges it in order, with offsets, through the callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.queued: list[tuple[Any, _Message]] = []
        self.ends: dict[tuple[str, int], int] = {}

    def produce(
        self, topic: str, value: Any = None, key: Any = None, partition: int = -1, on_delivery: Any = None, **kw: Any
    ) -> None:
        self.queued.append((on_delivery, _Message(topic, partition, 0, key, value)))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        queued, self.queued = self.queued, []
        for on_delivery, msg in queued:
            tp = (msg._topic, msg._partition)
            msg._offset = self.ends.get(tp, 0)
            self.ends[tp] = msg._offset + 1
            if on_delivery is not None:
                on_delivery(None, msg)
        return 0

    def __len__(self) -> int:
        return len(self.queued)


class _NoConsumer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def measure(
    records: int, process: int | None, store: str = "memory", state_dir: Path | None = None
) -> tuple[float, int]:
    """(CPU seconds, records processed) of Engine.process over the bench records; `store` rocksdb:
    the dedup keys and states on disk under `state_dir` (bench/disk_store.py), as the settings
    processor.dedup_store / state_store choose them."""
    import processors.kafka.producer as producer_module
    import processors.normalizer.owner as owner_module
    from bench.processor import records as bench_records
    from processors.avro.records import delivery_to_record
    from processors.dedup import MemoryDedupStore
    from processors.normalizer import recovery
    from processors.normalizer.runner import Engine
    from processors.pipeline import routing_id
    from processors.settings import KafkaSettings, ProcessorSection, ProcessorSettings, TopicSettings

    producer = _Producer()
    producer_module.Producer = lambda *a, **k: producer  # type: ignore[assignment,misc]
    owner_module.Consumer = _NoConsumer  # type: ignore[assignment,misc]
    settings = ProcessorSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        topics=TopicSettings(),
        processor=ProcessorSection(
            group_id="bench-engine-cost",
            metrics_port=None,
            **(
                {"dedup_store": "rocksdb", "state_store": "rocksdb", "state_dir": state_dir}
                if store == "rocksdb"
                else {}
            ),
        ),
    )
    engine = Engine(settings)
    assert engine.outputs.producer is producer
    deliveries, _ = bench_records(records)
    messages = []
    for offset, d in enumerate(deliveries):
        key = (routing_id(d.provider, d.body) or d.request_id).encode()
        value = engine.codec.encode("RawDelivery", delivery_to_record(d))
        messages.append(_Message(settings.topics.raw, offset % 3, offset // 3, key, value))
    messages.sort(key=lambda m: (m._partition, m._offset))  # as a consumer hands them over, roughly
    messages = messages[:process] if process is not None else messages
    for partition in range(3):
        engine.owner.owned[partition] = (
            recovery.PartitionStores(partition, MemoryDedupStore())
            if store == "memory"
            else recovery.open_stores(
                settings.processor, settings.topics, engine.codec, engine.owner._memory, partition
            )
        )
    gc.collect()
    gc.freeze()  # the bench's own records are not the processor's heap (as in bench/processor.py)
    stop = threading.Event()
    started = time.process_time()
    for i in range(0, len(messages), BATCH):
        engine.process(messages[i : i + BATCH], None, stop)  # type: ignore[arg-type]
    return time.process_time() - started, len(messages)


def instructions(records: int, process: int) -> int | None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    out = subprocess.run(
        [
            *(valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"),
            *(sys.executable, __file__, "--child", str(records), str(process)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    return int(found.group(1).replace(",", "")) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind, ~1 min)")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measured run, in a process of its own (inside valgrind for --instructions)
        records, process = args.child
        with common.quiet("engine_cost"):
            cpu, n = measure(records, process if process > 0 else None)
        print(f"measured {cpu} {n}")
        return
    common.print_machine()
    print(f"== engine cost: Engine.process over {args.records:,} bench records, in process, no broker", flush=True)
    best = None
    for _ in range(args.runs):
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(args.records), "0"], capture_output=True, text=True, check=True
        )
        _, cpu, n = [line for line in result.stdout.splitlines() if line.startswith("measured ")][-1].split()
        per = float(cpu) / int(n) * 1e6
        best = per if best is None else min(best, per)
        print(f"  run: {per:.1f} µs CPU per record", flush=True)
    rows = [["CPU per record (best run)", f"{best:.1f} µs", f"{1e6 / best:,.0f} records/s of one core"]]
    if args.instructions:
        low, high = instructions(6000, 2000), instructions(6000, 6000)
        if low is None or high is None:
            rows.append(["instructions per record", "valgrind not installed", ""])
        else:
            rows.append(["instructions per record", f"{(high - low) // 4000:,}", "cachegrind, 6,000 - 2,000 records"])
    print(common.table(["figure", "value", "note"], rows))
    common.save("engine_cost", {"cpu_us_per_record": best, "records": args.records})


if __name__ == "__main__":
    main()
