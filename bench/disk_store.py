"""bench-disk-store: a partition's stores on disk (rocksdb) against the in-memory store, same run.

restore    N DedupRecords through the embedded broker (as dedup_restore.py produces them): cold
           rebuild into the in-memory store (the baseline), cold rebuild into a rocksdb store,
           then the warm restart of that rocksdb store (its offset is current: the tail is empty)
resident   K dedup keys and K/2 states: filled directly into a rocksdb store (no broker: the
           embedded broker holds ~10x its data in memory; written as a rebuild writes), then, in
           a fresh process, a restart on the same disk: the store reopened, a tail of 10,000 dedup
           records restored through an embedded broker, 20,000 lookups (ready time, RSS and peak
           RSS from /proc/self/status), against the in-memory store filled with --memory-keys
           keys in a fresh process (its RSS and fill time)
engine     Engine.process CPU per record (bench/engine_cost.py, no broker) with dedup_store and
           state_store rocksdb against memory, interleaved, the best of --runs each

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
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import dedup_restore as dr

from bench import engine_cost
from processors.dedup import MemoryDedupStore
from processors.diskstore import Memory, PartitionDB
from processors.kafka import embedded
from processors.kafka.serde import Codec
from processors.normalizer import recovery
from processors.settings import KafkaSettings

CACHE_MB, WRITE_MB = 64, 32  # processor.store_block_cache_mb / store_write_buffer_mb defaults
STATE = b"\xc3\x01" + bytes(8) + b"x" * 90  # a state value's size (~100 bytes); never decoded here
TAIL = 10_000  # dedup records a restart reads (the changelog's tail since the store's offset)
LOOKUPS = 20_000
GOALS = {"rate": 250_000, "rss_mb": 512, "ready_s": 5.0, "engine": 1.10}


def _memory() -> Memory:
    return Memory(CACHE_MB << 20, WRITE_MB << 20)


def _open(path: Path) -> PartitionDB:
    return PartitionDB(path, _memory(), lambda s: b"", lambda raw: None)  # type: ignore[arg-type,return-value]


def _key(i: int) -> bytes:
    """~80 bytes like esign's keys, in no order (a multiplicative hash of i)."""
    return b"esign:%032x:COMPLETED:VALID:2026-05-08T10:30:00Z" % (i * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128)


def restore_phase(records: int) -> dict[str, float]:
    running = embedded.start("127.0.0.1", embedded.free_port())
    kafka = KafkaSettings(bootstrap_servers=running.bootstrap_servers)
    codec, now = Codec(), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        dr.create_topics(running.bootstrap_servers, dr.TOPIC, dr.STATE_TOPIC)
        dr.produce(kafka, codec, records, now)

        cpu: dict[str, float] = {}

        def timed(stores: recovery.PartitionStores, name: str) -> float:
            """Wall seconds; the main thread's CPU seconds to `cpu` (librdkafka's, the broker's and
            RocksDB's threads run beside it: on a shared machine they wait for a core)."""
            consumer = dr.new_consumer(kafka, f"bench-disk-{uuid.uuid4().hex[:8]}", {})
            try:
                started, thread = time.perf_counter(), time.thread_time()
                recovery.restore(consumer, codec, dr.TOPIC, dr.STATE_TOPIC, {0: stores}, now, 3600)
                cpu[name] = time.thread_time() - thread
                return time.perf_counter() - started
            finally:
                consumer.close()

        memory = recovery.PartitionStores(0, MemoryDedupStore())
        memory_s = timed(memory, "memory")
        memory.close()
        db = _open(work / "p0")
        cold_s = timed(recovery.PartitionStores(0, db.dedup, db.states, disk=db), "cold")
        db.close()
        db = _open(work / "p0")
        warm = recovery.PartitionStores(0, db.dedup, db.states, disk=db)
        warm_s = timed(warm, "warm")
        assert len(warm.dedup) == records and warm.read_records == 0, (len(warm.dedup), warm.read_records)
        db.close()
        return {
            "records": records,
            "memory_s": memory_s,
            "cold_s": cold_s,
            "warm_s": warm_s,
            "memory_cpu_s": cpu["memory"],
            "cold_cpu_s": cpu["cold"],
        }
    finally:
        running.stop()
        shutil.rmtree(work, ignore_errors=True)


def fill(path: Path, keys: int) -> float:
    """Keys and states written as a rebuild writes them (diskstore.begin_rebuild), offsets left at
    0: the store reflects no changelog, so a restart reads its changelogs whole (the tail)."""
    db = _open(path)
    started = time.perf_counter()
    expires = int(time.time()) + 7 * 24 * 3600
    assert db.begin_rebuild()
    add, put = db.dedup.add_utf8, db.states.put_encoded
    for i in range(keys):
        key = _key(i)
        add(key, expires + i % 3600)
        if i % 2 == 0:
            put(key[:38], STATE)
        if i % 50_000 == 49_999:
            db.commit()
    db.end_rebuild()
    assert (len(db.dedup), len(db.states)) == (keys, (keys + 1) // 2), (len(db.dedup), len(db.states))
    db.close()
    return time.perf_counter() - started


def _status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child(kind: str, path: str, keys: int) -> None:
    """In a fresh process. rocksdb: a restart on the same disk, timed from opening the store to
    its first lookups answered (the tail restored through a broker started beforehand, untimed);
    memory: the in-memory store filled with `keys` keys."""
    base = dr.trimmed_rss_mb()
    rng = random.Random(1)
    if kind == "memory":
        started = time.perf_counter()
        memory = MemoryDedupStore()
        for i in range(keys):
            memory.add_utf8(_key(i), 2_000_000_000)
        ready = time.perf_counter() - started
        hits = sum(_key(rng.randrange(keys)).decode() in memory for _ in range(LOOKUPS))
        assert hits == LOOKUPS, hits
        print(json.dumps({"ready_s": ready, "base_mb": base, "keys": len(memory), **_status()}))
        return
    running = embedded.start("127.0.0.1", embedded.free_port())
    try:
        kafka = KafkaSettings(bootstrap_servers=running.bootstrap_servers)
        codec, now = Codec(), datetime.now(UTC)
        dr.create_topics(running.bootstrap_servers, dr.TOPIC, dr.STATE_TOPIC)
        dr.produce(kafka, codec, TAIL, now)
        consumer = dr.new_consumer(kafka, f"bench-disk-{uuid.uuid4().hex[:8]}", {})
        started = time.perf_counter()
        db = _open(Path(path))
        stores = recovery.PartitionStores(0, db.dedup, db.states, disk=db)
        recovery.restore(consumer, codec, dr.TOPIC, dr.STATE_TOPIC, {0: stores}, now, 60)
        restored = time.perf_counter() - started
        hits = sum(_key(rng.randrange(keys)).decode() in db.dedup for _ in range(LOOKUPS))
        states = sum(_key(rng.randrange(keys))[:38].decode() in db.states for _ in range(LOOKUPS))
        ready = time.perf_counter() - started
        assert stores.read_records == TAIL and hits == LOOKUPS and states > 0, (stores.read_records, hits, states)
        assert len(db.dedup) == keys + TAIL, len(db.dedup)
        print(
            json.dumps({"ready_s": ready, "restored_s": restored, "base_mb": base, "keys": len(db.dedup), **_status()})
        )
        consumer.close()
        db.close()
    finally:
        running.stop()


def resident_phase(keys: int, memory_keys: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        fill_s = fill(work / "p0", keys)

        def run(kind: str) -> dict[str, float]:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    str(work / "p0"),
                    str(memory_keys if kind == "memory" else keys),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            return dict(json.loads(out.strip().splitlines()[-1]))

        disk, mem = run("rocksdb"), run("memory")
        mem["keys_filled"] = memory_keys
        size = sum(f.stat().st_size for f in (work / "p0").rglob("*") if f.is_file()) / 2**20
        return {"keys": keys, "fill_s": fill_s, "disk_mb": size, "rocksdb": disk, "memory": mem}  # type: ignore[dict-item]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def engine_phase(records: int, runs: int) -> dict[str, float]:
    """Engine.process CPU µs per record, the best of `runs` of each store kind, interleaved."""
    best: dict[str, float] = {}
    for _ in range(runs):
        for kind in ("memory", "rocksdb"):
            work = Path(tempfile.mkdtemp(prefix="bench-disk-engine-"))
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--engine-child", kind, str(work), str(records)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            finally:
                shutil.rmtree(work, ignore_errors=True)
            per = float([line for line in out.splitlines() if line.startswith("measured ")][-1].split()[1])
            best[kind] = min(best.get(kind, per), per)
    return best


def engine_child(kind: str, state_dir: str, records: int) -> None:
    from bench import common

    with common.quiet(f"disk_store-engine-{kind}"):
        cpu, n = engine_cost.measure(records, None, kind, Path(state_dir))
    print(f"measured {cpu / n * 1e6}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300_000, help="changelog records through the broker")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys filled directly (states: half)")
    parser.add_argument(
        "--memory-keys", type=int, help="keys in the in-memory store's baseline (default: --keys, at most 2M)"
    )
    parser.add_argument("--engine-records", type=int, default=30_000, help="bench records through Engine.process")
    parser.add_argument("--runs", type=int, default=3, help="Engine runs of each store kind (the best counts)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--engine-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.engine_child:
        engine_child(args.engine_child[0], args.engine_child[1], int(args.engine_child[2]))
        return
    memory_keys = args.memory_keys or min(args.keys, 2_000_000)
    print(
        f"# bench-disk-store  {datetime.now(UTC):%Y-%m-%d %H:%M}Z  load {dr.load()}  cpus {os.cpu_count()}", flush=True
    )
    r = restore_phase(args.records)
    n = r["records"]
    print(
        f"\nrestore of {n:,} dedup records (block cache {CACHE_MB} MB, write buffers {WRITE_MB} MB)  load {dr.load()}"
    )
    print(f"  {'':32s} {'wall':>9s}  {'rate':>10s}        {'ratio':>5s}  main thread CPU")
    print(
        f"  {'in-memory store, cold':32s} {r['memory_s']:7.2f} s  {n / r['memory_s']:>10,.0f} rec/s  1.00x  "
        f"{r['memory_cpu_s'] / n * 1e6:.2f} µs/record"
    )
    print(
        f"  {'rocksdb store, cold (rebuild)':32s} {r['cold_s']:7.2f} s  {n / r['cold_s']:>10,.0f} rec/s  "
        f"{r['memory_s'] / r['cold_s']:.2f}x  {r['cold_cpu_s'] / n * 1e6:.2f} µs/record "
        f"({n / r['cold_cpu_s']:,.0f} rec/s of one core)"
    )
    print(
        f"  {'rocksdb store, warm (tail only)':32s} {r['warm_s']:7.2f} s  {'':>10s}        "
        f"{r['memory_s'] / r['warm_s']:.1f}x",
        flush=True,
    )
    s = resident_phase(args.keys, memory_keys)
    k, disk, mem = s["keys"], s["rocksdb"], s["memory"]
    print(
        f"\n{k:,} keys and {(k + 1) // 2:,} states filled directly in {s['fill_s']:.1f} s "
        f"({k / s['fill_s']:,.0f} keys/s); {s['disk_mb']:,.0f} MB on disk  load {dr.load()}"
    )
    print(f"  {'fresh process':40s} {'ready':>8s} {'VmRSS':>9s} {'VmHWM':>9s} {'RSS - start':>12s}")
    rows = (
        (f"in-memory store, {mem['keys_filled']:,} keys (filled)", mem),
        (f"rocksdb store, restart (+{TAIL:,} tail)", disk),
    )
    for name, row in rows:
        print(
            f"  {name:40s} {row['ready_s']:7.2f}s {row['VmRSS']:6.0f} MB {row['VmHWM']:6.0f} MB "
            f"{row['VmRSS'] - row['base_mb']:9.0f} MB"
        )
    e = engine_phase(args.engine_records, args.runs)
    ratio = e["rocksdb"] / e["memory"]
    print(f"\nEngine.process, {args.engine_records:,} bench records, best of {args.runs}  load {dr.load()}")
    print(f"  {'memory stores':32s} {e['memory']:7.1f} µs CPU/record  {1e6 / e['memory']:>8,.0f} /s  1.00x")
    print(
        f"  {'rocksdb stores':32s} {e['rocksdb']:7.1f} µs CPU/record  {1e6 / e['rocksdb']:>8,.0f} /s  {1 / ratio:.2f}x"
    )
    rate = n / r["cold_s"]
    print()
    at = f"at {k:,} keys + {(k + 1) // 2:,} states"
    for what, goal, met in (
        (
            f"cold rebuild {rate:,.0f} rec/s, {n:,} records, {r['memory_s'] / r['cold_s']:.2f}x the in-memory store",
            ">= 250,000 rec/s",
            rate >= GOALS["rate"],
        ),
        (f"restart ready {disk['ready_s']:.2f} s {at}", "< 5 s", disk["ready_s"] < GOALS["ready_s"]),
        (f"RSS {disk['VmRSS']:.0f} MB (peak {disk['VmHWM']:.0f}) {at}", "< 512 MB", disk["VmHWM"] < GOALS["rss_mb"]),
        (f"Engine events/s with rocksdb {1 / ratio:.2f}x memory", ">= 0.91x", ratio <= GOALS["engine"]),
    ):
        print(f"target: disk store {what} (goal {goal}) {'met' if met else 'not met'}")
    Path(__file__).with_name(".out").mkdir(exist_ok=True)
    Path(__file__).with_name(".out").joinpath("disk_store.json").write_text(
        json.dumps({"restore": r, "resident": s, "engine": e, "load": dr.load()})
    )


if __name__ == "__main__":
    main()
