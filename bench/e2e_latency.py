"""End-to-end bench: webhook accepted -> its event readable by a consumer, p50/p99 at a fixed rate.

On a fresh embedded broker (Tansu): `kycstream gateway` and `kycstream process` as separate
processes (the config of bench/common.py: deploy/kycstream.dev.yaml on the bench topics), a
consumer in this process reading the events topic (fetch.wait.max.ms 10), and bench/loadgen.py
posting ~1 KB Xendit webhooks (unique ids) at a fixed rate, open loop, recording for each request
when it was sent and when its 200 arrived (monotonic clock, shared by the processes of one
machine). An event is matched to its request by raw_ref.request_id.

Three times: with the processor's defaults (batch_size 500, poll_timeout_s 0.05, librdkafka's
fetch.wait.max.ms 500), with poll_timeout_s 0.02 (consume() waits for a full batch or the
timeout), and with fetch.wait.max.ms 10 on top (Tansu answers a fetch only when that wait is
over, where Kafka answers as soon as data arrives): what each wait costs at a low rate.

    .venv/bin/python bench/e2e_latency.py [--rate 500] [--duration 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench import common
from processors.kafka import config, embedded
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, ProcessorSection

PY = str(common.VENV_BIN / "python")
KYCSTREAM = str(common.VENV_BIN / "kycstream")


class EventClock(threading.Thread):
    """Reads the events topic; notes when each request id's event became readable."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            config.consumer(
                KafkaSettings(bootstrap_servers=bootstrap),
                f"bench-e2e-{uuid.uuid4().hex[:6]}",
                **{"enable.partition.eof": False, "fetch.wait.max.ms": 10},
            )
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.codec = Codec()
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None:
                continue
            now = time.monotonic()
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"consumer: {err.str()}", file=sys.stderr)
                continue
            event = self.codec.decode("VerificationEvent", msg.value() or b"")
            ref = event.get("raw_ref") or {}
            self.seen.setdefault(ref.get("request_id", ""), now)
        self.consumer.close()


def wait_for_log(path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}; see {path}")
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{needle!r} did not appear in {path} within {timeout:g}s")


def loadgen(port: int, rate: float, seconds: float, record: Path | None = None) -> dict[str, Any]:
    import json

    args = [PY, str(common.BENCH / "loadgen.py"), "--port", str(port), "--mode", "fixed", "--rate", str(rate)]
    args += ["--duration", str(seconds), "--connections", "32"]
    if record is not None:
        args += ["--record", str(record)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(
    label: str,
    rate: float,
    seconds: float,
    partitions: int,
    poll_timeout_s: float | None,
    fetch_wait_ms: int | None = None,
) -> dict[str, Any]:
    with common.broker() as running:
        bootstrap = running.bootstrap_servers
        topics = common.make_topics(bootstrap, f"e2e{uuid.uuid4().hex[:4]}", partitions)
        port = embedded.free_port()
        cfg = common.write_config(common.OUT / f"e2e-{label}.yaml", bootstrap, topics, port)
        if poll_timeout_s is not None or fetch_wait_ms is not None:
            import yaml

            data = yaml.safe_load(cfg.read_text())
            if poll_timeout_s is not None:
                data["processor"]["poll_timeout_s"] = poll_timeout_s
            if fetch_wait_ms is not None:  # consumers only; producers ignore it (with a warning)
                data["kafka"]["extra"] = {"fetch.wait.max.ms": str(fetch_wait_ms)}
            cfg.write_text(yaml.safe_dump(data))
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        gateway = common.spawn([KYCSTREAM, "gateway", "--config", str(cfg)], f"e2e-{label}-gateway", env)
        processor = common.spawn([KYCSTREAM, "process", "--config", str(cfg)], f"e2e-{label}-processor", env)
        clock = EventClock(bootstrap, topics.events, partitions)
        try:
            common.wait_port(port, 30, gateway)
            wait_for_log(common.OUT / f"e2e-{label}-processor.log", "partitions_restored", processor)
            clock.start()
            loadgen(port, 100, 3)  # warm-up: producers, group, caches
            record = common.OUT / f"e2e-{label}-requests.txt"
            sent = loadgen(port, rate, seconds, record)
            wanted: dict[str, tuple[float, float]] = {}
            for line in record.read_text().splitlines():
                rid, due, _sent, done, status = line.split()
                if status == "200" and rid:
                    wanted[rid] = (float(due), float(done))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(r not in clock.seen for r in wanted):
                time.sleep(0.2)
        finally:
            clock.stopping.set()
            common.stop(gateway)
            common.stop(processor)
        clock.join(5)
    after_accept = sorted(clock.seen[r] - done for r, (_, done) in wanted.items() if r in clock.seen)
    after_send = sorted(clock.seen[r] - due for r, (due, _) in wanted.items() if r in clock.seen)
    missing = sum(1 for r in wanted if r not in clock.seen)
    result = {
        "rate": rate,
        "accepted": len(wanted),
        "missing": missing,
        "statuses": sent["statuses"],
        "http_p50_ms": sent["p50_ms"],
        "http_p99_ms": sent["p99_ms"],
        "p50_ms": common.percentile(after_accept, 50) * 1000,
        "p99_ms": common.percentile(after_accept, 99) * 1000,
        "max_ms": (after_accept[-1] if after_accept else float("nan")) * 1000,
        "send_p50_ms": common.percentile(after_send, 50) * 1000,
        "send_p99_ms": common.percentile(after_send, 99) * 1000,
        "poll_timeout_s": poll_timeout_s if poll_timeout_s is not None else _DEFAULT_POLL_TIMEOUT_S,
        "fetch_wait_ms": fetch_wait_ms if fetch_wait_ms is not None else 500,
    }
    print(
        f"  {label:9} {rate:,.0f}/s: accepted→readable p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms "
        f"(sent→readable p99 {result['send_p99_ms']:.1f} ms; {result['accepted']:,} accepted, {missing} missing)",
        flush=True,
    )
    return result


_DEFAULT_POLL_TIMEOUT_S = ProcessorSection.model_fields["poll_timeout_s"].default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()

    print(f"== end to end: webhook accepted -> event readable, {args.rate:,.0f} webhooks/s for {args.duration:g} s")
    common.print_machine()
    results = {
        "defaults": run("defaults", args.rate, args.duration, args.partitions, None),
        "poll20ms": run("poll20ms", args.rate, args.duration, args.partitions, 0.02),
        "fetch10ms": run("fetch10ms", args.rate, args.duration, args.partitions, 0.02, 10),
    }
    rows = []
    for name, r in results.items():
        rows.append(
            [
                f"poll_timeout_s {r['poll_timeout_s']:g}, fetch.wait.max.ms {r['fetch_wait_ms']}"
                + (" (defaults)" if name == "defaults" else ""),
                f"{r['rate']:,.0f}",
                f"{r['http_p50_ms']:.1f} / {r['http_p99_ms']:.1f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['send_p99_ms']:.1f}",
                f"{r['accepted']:,}",
                str(r["missing"]),
            ]
        )
    print()
    print(
        f"end to end at {args.rate:,.0f} webhooks/s "
        f"(gateway and processor one process each, {args.partitions} partitions):"
    )
    print(
        common.table(
            [
                "processor",
                "webhooks/s",
                "HTTP p50 / p99 ms",
                "accepted→readable p50 ms",
                "p99 ms",
                "sent→readable p99 ms",
                "events",
                "missing",
            ],
            rows,
        )
    )
    d = results["defaults"]
    f = results["fetch10ms"]
    info = [
        f"measured: end to end accepted→readable p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms at "
        f"{args.rate:,.0f}/s with the defaults (no goal set; poll_timeout_s 0.02 + fetch.wait.max.ms 10: "
        f"p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms)"
    ]
    targets = [
        common.Target(
            "end to end: every accepted webhook's event readable", d["accepted"] - d["missing"], d["accepted"], "events"
        )
    ]
    common.save("e2e", {"results": results, "targets": [t.line() for t in targets], "info": info})
    common.finish(targets, info)


if __name__ == "__main__":
    main()
