"""Gateway bench: accepted webhooks/s and latency against the bare-Starlette ceiling and a naive handler.

Three servers, each a separate process served by uvicorn exactly as `kycstream gateway` serves the
gateway (one worker, uvloop + httptools, gateway/server.py's settings), each on a fresh embedded
broker (Tansu) with the five topics created:

  bare     bench/apps.py bare: the webhook route only answers 200 (the ceiling)
  naive    bench/apps.py naive: produce the body and flush, per request (acks=all, idempotent)
  gateway  `kycstream gateway --config <bench config>`: auth, limits, Avro envelope, produce with
           acks=all and idempotence, 200 after the delivery report (shared batches, linger.ms 1)

Load: wrk (one thread, 64 keep-alive connections, --latency) posting ~1 KB Xendit webhooks with a
unique data.id and webhook-id each (bench/wrk_xendit.lua), after a warm-up; the better of two runs.
Then the gateway at a fixed rate of half its measured maximum with bench/loadgen.py (open loop,
wrk2-style: latency from each request's due time, so no coordinated omission). Without wrk (and
no way to install it) the closed-loop mode of bench/loadgen.py stands in for it.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/ (this file is gateway.py)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.loadgen import xendit_body_template
from processors.kafka import embedded

PY = str(common.VENV_BIN / "python")
GOAL_CEILING = 0.70
GOAL_NAIVE = 3.5
GOAL_P99_MS = 25.0


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing wrk (apt-get)...", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)  # type: ignore[call-overload]
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, **quiet)  # type: ignore[call-overload]
    return shutil.which("wrk")


class Load:
    """Closed-loop load at N connections: wrk if present, else bench/loadgen.py --mode closed."""

    def __init__(self, wrk: str | None, connections: int) -> None:
        self.wrk = wrk
        self.connections = connections
        self.template = common.OUT / "xendit_body.tmpl"
        common.OUT.mkdir(exist_ok=True)
        self.template.write_text(xendit_body_template())
        self.salt = int(time.time()) % 1_000_000

    @property
    def tool(self) -> str:
        return f"wrk -t1 -c{self.connections}" if self.wrk else f"bench/loadgen.py closed -c{self.connections}"

    def run(self, port: int, seconds: float) -> dict[str, Any]:
        self.salt += 1
        url = f"http://127.0.0.1:{port}/webhooks/xendit"
        if self.wrk is None:
            cmd = [PY, str(common.BENCH / "loadgen.py"), "--port", str(port), "--mode", "closed"]
            cmd += ["--salt", str(self.salt), "--connections", str(self.connections), "--duration", str(seconds)]
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            return {"ok_per_s": r["ok_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "failed": r["errors"]}
        args = [self.wrk, "-t1", f"-c{self.connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
        args += ["-s", str(common.BENCH / "wrk_xendit.lua"), url, "--", str(self.template), str(self.salt)]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("wrk-json "))
        r = json.loads(line.removeprefix("wrk-json "))
        failed = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
        return {
            "ok_per_s": (r["requests"] - failed) / (r["duration_us"] / 1e6),
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "failed": failed,
        }


def fixed_rate(port: int, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            *(PY, str(common.BENCH / "loadgen.py"), "--port", str(port), "--mode", "fixed", "--rate", f"{rate:.0f}"),
            *("--duration", str(seconds), "--connections", str(connections)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def wait_ready(port: int, process: subprocess.Popen[bytes], path: str = "/readyz", timeout: float = 30) -> None:
    common.wait_port(port, timeout, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{path} on port {port} did not answer 200 within {timeout:g}s")


def measure(
    name: str,
    args: list[str],
    load: Load,
    seconds: float,
    env: dict[str, str] | None = None,
    *,
    ready: str | None = None,
) -> tuple[dict[str, Any], subprocess.Popen[bytes], int]:
    port = embedded.free_port()
    process = common.spawn([*args, "--port", str(port)], f"gateway-{name}", env)
    try:
        if ready:
            wait_ready(port, process, ready)
        else:
            common.wait_port(port, 30, process)
        load.run(port, 3)  # warm-up: connections, producer batches, caches
        # Best of two runs: on a shared machine the slower one is the one something else disturbed.
        result = max((load.run(port, seconds) for _ in range(2)), key=lambda r: float(r["ok_per_s"]))
        result["rss_mb"] = round(common.rss_mb(process.pid), 1)
    except BaseException:
        common.stop(process)
        raise
    print(
        f"  {name:8} {result['ok_per_s']:9,.0f} accepted/s  p50 {result['p50_ms']:6.2f} ms  "
        f"p99 {result['p99_ms']:6.2f} ms  failed {result['failed']}",
        flush=True,
    )
    return result, process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--only", choices=("bare", "naive", "gateway"), action="append")
    args = parser.parse_args()

    print("== gateway: accepted webhooks/s at", args.connections, "connections, ~1 KB bodies")
    common.print_machine()
    wrk = ensure_wrk()
    load = Load(wrk, args.connections)
    print(f"load: {load.tool}, best of 2 × {args.duration:g} s after a 3 s warm-up; fixed rate: bench/loadgen.py")
    only = set(args.only or ("bare", "naive", "gateway"))
    results: dict[str, dict[str, Any]] = {}

    if "bare" in only:
        result, process, _ = measure("bare", [PY, str(common.BENCH / "apps.py"), "bare"], load, args.duration)
        common.stop(process)
        results["bare"] = result

    if "naive" in only:
        with common.broker() as running:
            topics = common.make_topics(running.bootstrap_servers, "naive", args.partitions)
            env = {"KAFKA_BOOTSTRAP_SERVERS": running.bootstrap_servers}
            cmd = [PY, str(common.BENCH / "apps.py"), "naive", "--topic", topics.raw]
            result, process, _ = measure("naive", cmd, load, args.duration, env)
            common.stop(process)
            results["naive"] = result

    fixed: dict[str, Any] | None = None
    if "gateway" in only:
        with common.broker() as running:
            topics = common.make_topics(running.bootstrap_servers, "gateway", args.partitions)
            config = common.write_config(common.OUT / "gateway.yaml", running.bootstrap_servers, topics, 8080)
            env = {"KAFKA_BOOTSTRAP_SERVERS": running.bootstrap_servers}
            cmd = [str(common.VENV_BIN / "kycstream"), "gateway", "--config", str(config)]
            result, process, port = measure("gateway", cmd, load, args.duration, env, ready="/readyz")
            results["gateway"] = result
            try:
                rate = result["ok_per_s"] / 2
                fixed = fixed_rate(port, rate, args.duration, args.connections)
            finally:
                common.stop(process)
            print(
                f"  fixed rate {fixed['rate']:,.0f}/s: p50 {fixed['p50_ms']:.2f} ms  p99 {fixed['p99_ms']:.2f} ms  "
                f"p99.9 {fixed['p999_ms']:.2f} ms  statuses {fixed['statuses']}  errors {fixed['errors']}; "
                f"from the moment each was sent (not due): p99 {fixed['service_p99_ms']:.2f} ms, so the rest of "
                "the tail is requests that left the load generator late",
                flush=True,
            )

    ceiling = results.get("bare", {}).get("ok_per_s")
    naive = results.get("naive", {}).get("ok_per_s")
    rows = []
    for name, label in (
        ("bare", "bare Starlette, 200 only (ceiling)"),
        ("naive", "naive: produce + flush per request"),
        ("gateway", "kycstream gateway"),
    ):
        if name not in results:
            continue
        r = results[name]
        rows.append(
            [
                label,
                f"{r['ok_per_s']:,.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['ok_per_s'] / ceiling:.2f}" if ceiling else "-",
                f"{r['ok_per_s'] / naive:.2f}" if naive else "-",
                f"{r['rss_mb']:.0f}",
            ]
        )
    if fixed is not None:
        rows.append(
            [
                f"kycstream gateway, fixed {fixed['rate']:,.0f}/s (half max)",
                f"{fixed['ok_per_s']:,.0f}",
                f"{fixed['p50_ms']:.2f}",
                f"{fixed['p99_ms']:.2f}",
                "",
                "",
                "",
            ]
        )
    print()
    print(f"gateway, {args.connections} connections, {load.tool}:")
    print(common.table(["server", "accepted/s", "p50 ms", "p99 ms", "× ceiling", "× naive", "RSS MB"], rows))

    targets = []
    gw = results.get("gateway")
    if gw and ceiling:
        targets.append(
            common.Target(
                f"gateway throughput vs bare Starlette at {args.connections} connections",
                gw["ok_per_s"] / ceiling,
                GOAL_CEILING,
                "×",
                fmt="{:.2f}",
            )
        )
    if gw and naive:
        targets.append(
            common.Target(
                f"gateway throughput vs naive produce+flush at {args.connections} connections",
                gw["ok_per_s"] / naive,
                GOAL_NAIVE,
                "×",
                fmt="{:.2f}",
            )
        )
    if fixed is not None:
        targets.append(
            common.Target(
                f"gateway p99 at half its max ({fixed['rate']:,.0f}/s fixed rate)",
                fixed["p99_ms"],
                GOAL_P99_MS,
                "ms",
                higher_is_better=False,
                fmt="{:.1f}",
            )
        )
    common.save(
        "gateway",
        {
            "tool": load.tool,
            "duration": args.duration,
            "results": results,
            "fixed": fixed,
            "targets": [t.line() for t in targets],
        },
    )
    common.finish(targets)


if __name__ == "__main__":
    main()
