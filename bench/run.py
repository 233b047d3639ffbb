"""`make bench`: every benchmark in turn, each printing its table, then all target lines together.

    .venv/bin/python bench/run.py                 # gateway, processor, end to end, dedup restore, disk stores
    .venv/bin/python bench/run.py gateway e2e     # some of them
    .venv/bin/python bench/run.py --quick         # smaller runs, for a smoke test

Each script also runs alone (see bench/README.md). The terminal gets each script's standard output
(tables, target lines); its standard error to bench/.out/<name>.stderr.log, output of the processes
under test to bench/.out/ too; each script's figures to bench/.out/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
OUT = ROOT / "bench" / ".out"

BENCHES = {
    "gateway": ["bench/gateway.py"],
    "processor": ["bench/processor.py"],
    "engine": ["bench/engine_cost.py", "--instructions"],
    "e2e": ["bench/e2e_latency.py"],
    "dedup": ["bench/dedup_restore.py"],
    "inspect": ["bench/inspect_key.py"],
    "tracing": ["bench/tracing.py"],
    "disk": ["bench/disk_store.py", "--records", "2000000", "--keys", "20000000"],  # issue 28's sizes
}
QUICK = {
    "gateway": ["--duration", "4"],
    "processor": ["--records", "30000"],
    "engine": ["--records", "10000", "--runs", "1"],
    "e2e": ["--duration", "4"],
    "dedup": ["--keys", "100000", "--no-breakdown"],
    "inspect": ["--records", "30000"],
    "tracing": ["--duration", "4", "--records", "20000"],
    "disk": ["--records", "100000", "--keys", "200000", "--engine-records", "10000", "--runs", "1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help=f"which benchmarks, of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test, not figures to record")
    args = parser.parse_args()
    chosen = args.only or list(BENCHES)
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"bench: {', '.join(chosen)} on {os.cpu_count()} CPUs (load average {load} at start)", flush=True)
    targets: list[str] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in chosen:
        script = BENCHES[name]
        if not (ROOT / script[0]).exists():
            print(f"\n(skipping {name}: {script[0]} is not there)")
            continue
        print(f"\n{'=' * 100}", flush=True)
        cmd = [PY, *script, *(QUICK[name] if args.quick else [])]
        t = time.monotonic()
        # The terminal gets each script's standard output (its tables and target lines); standard error
        # (logs: the bench's, in-process clients', librdkafka's) goes to bench/.out/<name>.stderr.log.
        OUT.mkdir(exist_ok=True)
        errors = OUT / f"{name}.stderr.log"
        with (
            open(errors, "w") as stderr,
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True) as proc,
        ):
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if line.startswith("target:"):
                    targets.append(line.rstrip())
        print(f"({name}: {time.monotonic() - t:.0f} s, exit {proc.returncode})", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            tail = errors.read_text(errors="replace").splitlines()[-25:]
            print(f"{name} failed; the end of {errors.relative_to(ROOT)}:", *tail, sep="\n", flush=True)
    print(f"\n{'=' * 100}\nall targets ({time.monotonic() - started:.0f} s):")
    for line in targets:
        print(line)
    for name in failed:
        print(f"target: {name} bench completed (goal: exit 0) not met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
