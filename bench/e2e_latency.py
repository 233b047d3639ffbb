"""End-to-end bench: webhook accepted -> its event readable by a consumer, p50/p99 at a fixed rate.

On a fresh embedded broker (Tansu): `kycstream gateway` and `kycstream process` as separate
processes with the shipped dev config (deploy/kycstream.dev.yaml, what `make run` runs, on the
bench broker and topics: bench/common.py write_config), a consumer in this process reading the
events topic (configured as that config configures consumers), and bench/loadgen.py posting ~1 KB
Xendit webhooks (unique ids) at a fixed rate, open loop, recording for each request when it was
sent and when its 200 arrived (monotonic clock, shared by the processes of one machine). An event
is matched to its request by raw_ref.request_id.

Two runs: the shipped dev config (the main row and the target), and the same config without its
embedded-broker settings (kafka.extra, processor.poll_timeout_s and linger_ms, gateway.linger_ms
dropped: the settings' defaults, as a production config keeps them) to show what they buy. Tansu
answers a fetch only when fetch.wait.max.ms is over (librdkafka's default 500), where Kafka
answers as soon as data arrives. `--try NAME:PATH=VALUE,...` adds a row of the dev config with
changes, e.g. `--try f5:kafka.extra.fetch.wait.max.ms=5,processor.poll_timeout_s=0.01`.

    .venv/bin/python bench/e2e_latency.py [--rate 500] [--duration 10] [--try ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench import common
from gateway.settings import ServerSettings
from processors.kafka import config, embedded
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, ProcessorSection

PY = str(common.VENV_BIN / "python")
KYCSTREAM = str(common.VENV_BIN / "kycstream")
GOAL_P99_MS = 50.0


class EventClock(threading.Thread):
    """Reads the events topic; notes when each request id's event became readable."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        # A downstream consumer as the shipped dev config configures one (its kafka.extra), whatever
        # the run's processor config: the rows differ in the pipeline only.
        kafka = {**common.dev_config().get("kafka", {}), "bootstrap_servers": bootstrap}
        self.consumer = Consumer(
            config.consumer(
                KafkaSettings(**kafka), f"bench-e2e-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False}
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


# What deploy/kycstream.dev.yaml sets for the embedded broker only (see its comments); a production
# config leaves them at the settings' defaults.
EMBEDDED_TUNING = (
    ("kafka", "extra"),
    ("processor", "poll_timeout_s"),
    ("processor", "linger_ms"),
    ("gateway", "linger_ms"),
)
_DEFAULTS = {
    "processor.poll_timeout_s": ProcessorSection.model_fields["poll_timeout_s"].default,
    "processor.linger_ms": ProcessorSection.model_fields["linger_ms"].default,
    "gateway.linger_ms": ServerSettings.model_fields["linger_ms"].default,
}


def without_tuning(data: dict[str, Any]) -> None:
    for section, key in EMBEDDED_TUNING:
        data.get(section, {}).pop(key, None)


def with_changes(changes: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """An edit setting dotted paths: {"kafka.extra.fetch.wait.max.ms": "5"} (a librdkafka name keeps its dots)."""

    def edit(data: dict[str, Any]) -> None:
        for path, value in changes.items():
            section, key, *rest = path.split(".")
            if rest:  # kafka.extra.<librdkafka property>: strings, as the settings hold them
                data.setdefault(section, {}).setdefault(key, {})[".".join(rest)] = str(value)
            else:
                data.setdefault(section, {})[key] = value

    return edit


def describe(data: dict[str, Any]) -> str:
    """The settings that set the latency, as the run's config has them."""
    extra = data.get("kafka", {}).get("extra", {})
    parts = [
        f"poll_timeout_s {data['processor'].get('poll_timeout_s', _DEFAULTS['processor.poll_timeout_s']):g}",
        f"fetch.wait.max.ms {extra.get('fetch.wait.max.ms', 500)}",
    ]
    if "fetch.min.bytes" in extra:
        parts.append(f"fetch.min.bytes {extra['fetch.min.bytes']}")
    parts.append(f"linger_ms {data['processor'].get('linger_ms', _DEFAULTS['processor.linger_ms']):g}")
    parts.append(f"gateway {data['gateway'].get('linger_ms', _DEFAULTS['gateway.linger_ms']):g}")
    return ", ".join(parts)


def run(
    label: str,
    rate: float,
    seconds: float,
    partitions: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    import yaml

    with common.broker() as running:
        bootstrap = running.bootstrap_servers
        topics = common.make_topics(bootstrap, f"e2e{uuid.uuid4().hex[:4]}", partitions)
        port = embedded.free_port()
        cfg = common.write_config(common.OUT / f"e2e-{label}.yaml", bootstrap, topics, port, edit)
        settings = describe(yaml.safe_load(cfg.read_text()))
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
            clock.join(5)  # its consumer closed before the broker stops
            common.stop(gateway)
            common.stop(processor)
    # An event never read counts as infinitely late: p99 is over every accepted webhook.
    never = [float("inf")] * sum(1 for r in wanted if r not in clock.seen)
    after_accept = sorted([clock.seen[r] - done for r, (_, done) in wanted.items() if r in clock.seen] + never)
    after_send = sorted([clock.seen[r] - due for r, (due, _) in wanted.items() if r in clock.seen] + never)
    result = {
        "settings": settings,
        "rate": rate,
        "accepted": len(wanted),
        "missing": len(never),
        "statuses": sent["statuses"],
        "http_p50_ms": sent["p50_ms"],
        "http_p99_ms": sent["p99_ms"],
        "p50_ms": common.percentile(after_accept, 50) * 1000,
        "p99_ms": common.percentile(after_accept, 99) * 1000,
        "max_ms": (after_accept[-1] if after_accept else float("nan")) * 1000,
        "send_p50_ms": common.percentile(after_send, 50) * 1000,
        "send_p99_ms": common.percentile(after_send, 99) * 1000,
    }
    print(
        f"  {label:9} {rate:,.0f}/s: accepted→readable p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms "
        f"(sent→readable p99 {result['send_p99_ms']:.1f} ms; {result['accepted']:,} accepted, {len(never)} missing; "
        f"{settings})",
        flush=True,
    )
    return result


def parse_try(text: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, rest = text.partition(":")
    changes = {}
    for item in filter(None, rest.split(",")):
        path, _, value = item.partition("=")
        changes[path.strip()] = yaml.safe_load(value)
    return name, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--try", dest="tries", action="append", default=[], help="NAME:PATH=VALUE,...: a row of the dev config changed"
    )
    parser.add_argument("--no-defaults", action="store_true", help="skip the run without the embedded-broker settings")
    args = parser.parse_args()

    print(f"== end to end: webhook accepted -> event readable, {args.rate:,.0f} webhooks/s for {args.duration:g} s")
    common.print_machine()
    runs: list[tuple[str, str, Callable[[dict[str, Any]], None] | None]] = [
        ("dev", "shipped dev config", None),
    ]
    if not args.no_defaults:
        runs.append(("defaults", "its embedded-broker settings dropped (defaults)", without_tuning))
    for text in args.tries:
        name, changes = parse_try(text)
        runs.append((name, f"dev config, {name}", with_changes(changes)))
    results = {
        name: {"label": label, **run(name, args.rate, args.duration, args.partitions, edit)}
        for name, label, edit in runs
    }
    rows = [
        [
            f"{r['label']}: {r['settings']}",
            f"{r['rate']:,.0f}",
            f"{r['http_p50_ms']:.1f} / {r['http_p99_ms']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['send_p99_ms']:.1f}",
            f"{r['accepted'] - r['missing']:,}",
            str(r["missing"]),
        ]
        for r in results.values()
    ]
    print()
    print(
        f"end to end at {args.rate:,.0f} webhooks/s (gateway and processor one process each, {args.partitions} "
        "partitions; processor settings: poll_timeout_s, kafka.extra fetch.*, linger_ms; gateway: linger_ms):"
    )
    print(
        common.table(
            [
                "config",
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
    d = results["dev"]
    info = [
        f"measured: every accepted webhook's event readable: {d['accepted'] - d['missing']:,} of {d['accepted']:,} "
        "with the shipped dev config (one never read counts as infinitely late in its p99)"
    ]
    if "defaults" in results:
        f = results["defaults"]
        info.append(
            f"measured: without its embedded-broker settings p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms "
            "(on Kafka, which answers a fetch as soon as data arrives, the defaults do not wait like this)"
        )
    targets = [
        common.Target(
            f"end to end p99 at {args.rate:,.0f}/s with the shipped dev config",
            d["p99_ms"],
            GOAL_P99_MS,
            "ms",
            higher_is_better=False,
            fmt="{:.1f}",
        )
    ]
    common.save("e2e", {"results": results, "targets": [t.line() for t in targets], "info": info})
    common.finish(targets, info)


if __name__ == "__main__":
    main()
