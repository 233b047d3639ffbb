"""bench-inspect: how long `kycstream inspect PROVIDER:ID` takes on a raw topic of 100k other records.

Starts the embedded broker (Tansu) on a free port, creates the topics with 3 partitions (the dev
config's), sends one verification through the real processor (a delivery, its repeat: an event and
a state), then writes N raw records of other verifications. Measured in the same run:

  baseline   the whole raw topic read to EOF, keeping the key's records (what `tail --key` does)
  lookup     processors.operate.lookup.find + timeline.assemble: the key's partitions only
  command    `kycstream inspect KEY --json` as a process: start-up, config, read, print
  start-up   `kycstream --help` as a process: Python and the CLI's imports, the floor of any command

The embedded broker answers offsets-for-times with 0, so the time bound saves nothing here: the
key's partitions are read whole; on Kafka only what was written since `--since` is read.

    .venv/bin/python bench/inspect_key.py              # 100,000 other records
    .venv/bin/python bench/inspect_key.py --records 30000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from processors import logs
from processors.kafka import reader, topics
from processors.kafka.serde import Codec
from processors.operate import lookup, timeline
from processors.settings import KafkaSettings
from tests.conftest import committed_to_end, processing, produce_noise, produce_raw, raw_delivery, wait_until

GOAL_SECONDS = 1.0
ROUNDS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="raw records of other verifications")
    args = parser.parse_args()
    common.print_machine()
    logs.configure("INFO", "json")  # the processor's log to standard error (bench/.out/inspect.log), not stdout
    codec = Codec()
    # The processor and the clients log to bench/.out/inspect.log; every client is gone before the broker.
    with common.quiet("inspect"), common.broker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        names = common.make_topics(broker.bootstrap_servers, "inspect", 3)
        key = "esign:bench-1"
        body = b'{"submissionId":"bench-1","status":"COMPLETED","result":"VALID","processedAt":"2026-05-08T10:30:00Z"}'
        produce_raw(kafka, names.raw, [raw_delivery("esign", body), raw_delivery("esign", body)], codec)
        with processing(kafka, names, group_id="bench-inspect"):
            wait_until(lambda: committed_to_end(kafka, "bench-inspect", names.raw), 60, "the processor committed")
        started = time.monotonic()
        produce_noise(kafka, names.raw, args.records, codec)
        print(f"wrote {args.records:,} other raw records in {time.monotonic() - started:.1f} s")

        since = datetime.now(UTC) - timedelta(days=7)
        baseline, inspected, kinds, raw_read = [], [], [], 0
        for _ in range(ROUNDS):
            started = time.monotonic()
            mine = [r for r in reader.read_all(kafka, names.raw) if r.key == key.encode()]
            baseline.append(time.monotonic() - started)
            started = time.monotonic()
            found, scanned = lookup.find(kafka, names, key, since, codec)
            story = timeline.assemble(key, since, found, scanned)
            inspected.append(time.monotonic() - started)
            kinds = [e.kind for e in story.entries]
            raw_read = sum(s.records for s in scanned if s.topic == names.raw)
        assert len(mine) == 2 and kinds.count("delivery") == 2 and "event" in kinds and "state" in kinds, kinds

        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            **{f"KYCSTREAM_TOPICS__{role.upper()}": getattr(names, role) for role in topics.ROLES},
        }
        command = [_seconds(["inspect", key, "--json"], env) for _ in range(3)]
        startup = [_seconds(["--help"], env) for _ in range(3)]

    rows = [
        ["baseline: whole raw topic to EOF", f"{args.records + 2:,}", f"{statistics.median(baseline):.3f}"],
        ["lookup: the key's partitions", f"{raw_read:,} raw + the others", f"{statistics.median(inspected):.3f}"],
        ["`kycstream inspect KEY --json` (process)", "", f"{statistics.median(command):.3f}"],
        ["of which start-up: `kycstream --help`", "", f"{statistics.median(startup):.3f}"],
    ]
    print()
    print(common.table(["step (median of runs)", "records read", "seconds"], rows))
    ratio = statistics.median(baseline) / statistics.median(inspected)
    common.save(
        "inspect",
        {
            "baseline_s": baseline,
            "lookup_s": inspected,
            "command_s": command,
            "startup_s": startup,
            "raw_read": raw_read,
        },
    )
    common.finish(
        [
            common.Target(
                f"inspect one key, {args.records // 1000}k-record raw topic (command, median)",
                statistics.median(command),
                GOAL_SECONDS,
                "s",
                higher_is_better=False,
                fmt="{:.2f}",
            )
        ],
        [f"lookup {ratio:.1f}x faster than reading the whole raw topic (3 partitions: the key's is a third of it)"],
    )
    return 0


def _seconds(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "processors.cli", *args], env=env, cwd=common.ROOT, capture_output=True, check=True
    )
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
