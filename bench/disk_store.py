"""bench-disk-store: a partition's stores on disk (rocksdb) against the in-memory store, same run.

restore    N DedupRecords through the embedded broker (as dedup_restore.py produces them): cold
           rebuild into the in-memory store (the baseline), cold rebuild into a rocksdb store,
           then the warm restart of that rocksdb store (its offset is current: the tail is empty)
resident   K dedup keys and K/2 states: filled directly into a rocksdb store (no broker: the
           embedded broker holds ~10x its data in memory), then, each in a fresh process, the
           store reopened and 20,000 random lookups done (ready time, RSS), against the same keys
           in the in-memory store (RSS)

  .venv/bin/python bench/disk_store.py                         # 300k records, 1M keys
  .venv/bin/python bench/disk_store.py --records 2000000 --keys 20000000   # the issue's figures
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import dedup_restore as dr

from processors.dedup import MemoryDedupStore
from processors.diskstore import Memory, PartitionDB
from processors.kafka import embedded
from processors.kafka.serde import Codec
from processors.normalizer import recovery
from processors.settings import KafkaSettings

CACHE_MB, WRITE_MB = 64, 32  # processor.store_block_cache_mb / store_write_buffer_mb defaults
STATE = b"\xc3\x01" + bytes(8) + b"x" * 90  # a state value's size (~100 bytes); never decoded here


def _memory() -> Memory:
    return Memory(CACHE_MB << 20, WRITE_MB << 20)


def _open(path: Path) -> PartitionDB:
    return PartitionDB(path, _memory(), lambda s: b"", lambda raw: None)  # type: ignore[arg-type,return-value]


def _key(i: int) -> bytes:
    return f"esign:{uuid.UUID(int=i * 2654435761 % 2**128, version=4)}:COMPLETED:VALID:2026-05-08T10:30:00Z".encode()


def restore_phase(records: int) -> dict[str, float]:
    running = embedded.start("127.0.0.1", embedded.free_port())
    kafka = KafkaSettings(bootstrap_servers=running.bootstrap_servers)
    codec, now = Codec(), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        dr.create_topics(running.bootstrap_servers, dr.TOPIC, dr.STATE_TOPIC)
        dr.produce(kafka, codec, records, now)

        def timed(stores: recovery.PartitionStores) -> float:
            consumer = dr.new_consumer(kafka, f"bench-disk-{uuid.uuid4().hex[:8]}", {})
            try:
                started = time.perf_counter()
                recovery.restore(consumer, codec, dr.TOPIC, dr.STATE_TOPIC, {0: stores}, now, 3600)
                return time.perf_counter() - started
            finally:
                consumer.close()

        memory = recovery.PartitionStores(0, MemoryDedupStore())
        memory_s = timed(memory)
        memory.close()
        db = _open(work / "p0")
        cold_s = timed(recovery.PartitionStores(0, db.dedup, db.states, disk=db))
        db.close()
        db = _open(work / "p0")
        warm = recovery.PartitionStores(0, db.dedup, db.states, disk=db)
        warm_s = timed(warm)
        assert len(warm.dedup) == records and warm.read_records == 0, (len(warm.dedup), warm.read_records)
        db.close()
        return {"records": records, "memory_s": memory_s, "cold_s": cold_s, "warm_s": warm_s}
    finally:
        running.stop()
        shutil.rmtree(work, ignore_errors=True)


def fill(path: Path, keys: int) -> float:
    db = _open(path)
    started = time.perf_counter()
    expires = int(time.time()) + 7 * 24 * 3600
    for i in range(keys):
        key = _key(i)
        db.dedup.add_utf8(key, expires + i % 3600)
        if i % 2 == 0:
            db.states.put_encoded(b"esign:" + key[6:42], STATE)
        if i % 20_000 == 19_999:
            db.commit(dedup_next=i + 1, state_next=i // 2 + 1)
    db.commit(dedup_next=keys, state_next=keys // 2)
    db.db.flush()
    db.close()
    return time.perf_counter() - started


def child(kind: str, path: str, keys: int) -> None:
    """In a fresh process: ready time and RSS with the store open (rocksdb) or filled (memory)."""
    base = dr.trimmed_rss_mb()
    started = time.perf_counter()
    rng = random.Random(1)
    if kind == "rocksdb":
        db = _open(Path(path))
        store = db.dedup
    else:
        store = MemoryDedupStore()  # type: ignore[assignment]
        for i in range(keys):
            store.add_utf8(_key(i), 2_000_000_000)
    ready = time.perf_counter() - started
    hits = sum(_key(rng.randrange(keys)).decode() in store for _ in range(20_000))
    assert hits == 20_000, hits
    print(json.dumps({"ready_s": ready, "rss_mb": dr.rss_mb(), "base_mb": base, "keys": len(store)}))


def resident_phase(keys: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        fill_s = fill(work / "p0", keys)

        def run(kind: str) -> dict[str, float]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(work / "p0"), str(keys)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            return dict(json.loads(out.strip().splitlines()[-1]))

        disk, mem = run("rocksdb"), run("memory")
        size = sum(f.stat().st_size for f in (work / "p0").rglob("*") if f.is_file()) / 2**20
        return {"keys": keys, "fill_s": fill_s, "disk_mb": size, "rocksdb": disk, "memory": mem}  # type: ignore[dict-item]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300_000, help="changelog records through the broker")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys filled directly (states: half)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    print(f"# bench-disk-store  {datetime.now(UTC):%Y-%m-%d %H:%M}Z  load {dr.load()}  cpus {os.cpu_count()}")
    r = restore_phase(args.records)
    n = r["records"]
    print(f"\nrestore of {n:,} dedup records (block cache {CACHE_MB} MB, write buffers {WRITE_MB} MB)")
    print(f"  {'in-memory store, cold':32s} {r['memory_s']:7.2f} s  {n / r['memory_s']:>10,.0f} rec/s  1.00x")
    print(
        f"  {'rocksdb store, cold (rebuild)':32s} {r['cold_s']:7.2f} s  {n / r['cold_s']:>10,.0f} rec/s  "
        f"{r['memory_s'] / r['cold_s']:.2f}x"
    )
    print(
        f"  {'rocksdb store, warm (tail only)':32s} {r['warm_s']:7.2f} s  {'':>10s}        "
        f"{r['memory_s'] / r['warm_s']:.1f}x"
    )
    s = resident_phase(args.keys)
    k, disk, mem = s["keys"], s["rocksdb"], s["memory"]
    print(f"\n{k:,} keys and {k // 2:,} states filled directly in {s['fill_s']:.1f} s; {s['disk_mb']:.0f} MB on disk")
    print(f"  {'':32s} {'ready':>8s} {'RSS':>9s} {'RSS - start':>12s}")
    for name, row in (("in-memory store (keys only)", mem), ("rocksdb store (keys + states)", disk)):
        print(f"  {name:32s} {row['ready_s']:7.2f}s {row['rss_mb']:7.0f} MB {row['rss_mb'] - row['base_mb']:9.0f} MB")
    rate = n / r["cold_s"]
    print()
    for what, goal, met in (
        (f"warm restart ready {disk['ready_s']:.2f} s", "< 5 s", disk["ready_s"] < 5),
        (f"RSS with the store {disk['rss_mb']:.0f} MB", "< 512 MB", disk["rss_mb"] < 512),
        (f"cold rebuild {rate:,.0f} rec/s", ">= 250,000", rate >= 250_000),
    ):
        print(f"target: {what} (goal {goal}) {'met' if met else 'not met'}")
    Path(__file__).with_name(".out").mkdir(exist_ok=True)
    Path(__file__).with_name(".out").joinpath("disk_store.json").write_text(json.dumps({"restore": r, "resident": s}))


if __name__ == "__main__":
    main()
