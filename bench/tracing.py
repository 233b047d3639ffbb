"""Tracing bench: what OpenTelemetry traces cost, on and off, measured side by side in one run.

  gateway    `kycstream gateway` under bench/gateway.py's closed-loop load (wrk, 64 connections),
             once as is and once with OTEL_TRACES_EXPORTER=otlp: a request span and a produce span
             per webhook
  processor  the kycstream Engine over the same N raw records as bench/processor.py (fresh broker
             per phase), once as is and once traced: a processing span per record and a produce span
             per event

"On" exports for real: the SDK's batch span processor and OTLP/HTTP exporter (`kycstream[otlp]`,
installed into .venv when missing) to a local sink process that answers 200 and counts the spans
it was sent, so the cost includes the protobuf encoding and the HTTP posts on the exporter's
thread. "Off" is the product as shipped (OTEL_TRACES_EXPORTER unset): the hot paths test one
module flag, whose cost per request or record is measured on its own below the table.

    .venv/bin/python bench/tracing.py [--duration 10] [--records 100000] [--only gateway|processor]
"""

from __future__ import annotations

import argparse
import gc
import http.server
import os
import subprocess
import sys
import threading
import timeit
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

PY = str(common.VENV_BIN / "python")
# Off must cost nothing measurable: its one flag test, as a share of a request's time at the measured
# rate. On has no goal here: it is the Python SDK's cost per span, reported side by side.
GOAL_OFF_SHARE = 0.001
SAMPLED = 0.1  # the third phase: parentbased_traceidratio at this ratio
PHASES = ("off", "on", "sampled")
EXPORTER = "opentelemetry-exporter-otlp-proto-http>=1.27"


# --- the span sink -------------------------------------------------------------------------------


def serve_sink(port: int) -> None:
    """An OTLP/HTTP receiver: 200 to every export; GET / answers the spans received. The exports are
    parsed only when asked, after a phase: the sink shares the machine with what it measures."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = 0
    pending: list[bytes] = []
    lock = threading.Lock()

    def count() -> int:
        nonlocal spans
        with lock:
            bodies = pending[:]
            pending.clear()
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return spans

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                pending.append(body)
            self._answer(b"")

        def do_GET(self) -> None:
            self._answer(str(count()).encode())

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Sink:
    def __init__(self) -> None:
        from processors.kafka import embedded

        self.port = embedded.free_port()
        self.process = common.spawn([PY, __file__, "--sink", str(self.port)], "tracing-sink")
        common.wait_port(self.port, 30, self.process)

    def env(self, phase: str) -> dict[str, str]:
        """The environment of a phase: off sets nothing; sampled keeps one trace in SAMPLED."""
        if phase == "off":
            return {}
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
        }
        if phase == "sampled":
            env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(SAMPLED)}
        return env

    def spans(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as answer:
            return int(answer.read())

    def close(self) -> None:
        common.stop(self.process)


def ensure_exporter() -> None:
    probe = [PY, "-c", "import opentelemetry.exporter.otlp.proto.http"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"installing {EXPORTER} into .venv (the kycstream[otlp] extra)...", flush=True)
        subprocess.run([PY, "-m", "pip", "install", "-q", EXPORTER], check=True, stdout=subprocess.DEVNULL)


# --- the phases ----------------------------------------------------------------------------------


def gateway_phases(args: argparse.Namespace, sink: Sink) -> dict[str, dict[str, Any]]:
    from bench import gateway

    load = gateway.Load(gateway.ensure_wrk(), args.connections)
    print(f"gateway load: {load.tool}, best of 2 × {args.duration:g} s after a 3 s warm-up", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        before = sink.spans()
        with common.broker() as running:
            topics = common.make_topics(running.bootstrap_servers, f"tracing-{name}", args.partitions)
            config = common.write_config(common.OUT / "gateway.yaml", running.bootstrap_servers, topics, 8080)
            env = {"KAFKA_BOOTSTRAP_SERVERS": running.bootstrap_servers, **sink.env(name)}
            cmd = [str(common.VENV_BIN / "kycstream"), "gateway", "--config", str(config)]
            result, process, _ = gateway.measure(f"tracing-{name}", cmd, load, args.duration, env, ready="/readyz")
            common.stop(process)  # SIGTERM: the SDK flushes its queue on exit
        result["spans"] = sink.spans() - before
        results[name] = result
    return results


def processor_phases(args: argparse.Namespace, sink: Sink) -> dict[str, dict[str, Any]]:
    from bench import processor
    from processors import logs, tracing
    from processors.kafka.serde import Codec

    deliveries, _ = processor.records(args.records)
    codec = Codec()
    logs.configure("INFO", "json")  # as `kycstream process` logs, to a file (logs write to sys.stderr)
    n = len(deliveries)
    results: dict[str, dict[str, Any]] = {}
    for name in PHASES:
        before = sink.spans()
        saved = dict(os.environ)
        os.environ.update(sink.env(name))
        provider = tracing.provider_from_env("kycstream-processor")
        if provider is not None:
            tracing.enable(provider)
        try:
            # The Engine's logs and librdkafka's to bench/.out/; its clients are gone before its broker stops.
            with common.quiet(f"tracing-engine-{name}"):
                result = processor.phase(
                    f"tracing-{name}", deliveries, codec, args.partitions, lambda b, tp: processor.run_engine(b, tp, n)
                )
        finally:
            tracing.disable()
            if provider is not None:
                provider.shutdown()  # exports what is queued
            os.environ.clear()
            os.environ.update(saved)
            gc.unfreeze()  # run_engine froze the heap; the next phase starts as this one did
        result["spans"] = sink.spans() - before
        results[name] = result
    return results


def guard_ns() -> float:
    """What the off path adds per request or record: one `if tracing.ENABLED` test."""
    from processors import tracing

    assert not tracing.ENABLED
    number = 2_000_000
    guarded = min(timeit.repeat("if tracing.ENABLED: pass", globals={"tracing": tracing}, number=number, repeat=5))
    empty = min(timeit.repeat("pass", number=number, repeat=5))
    return max(0.0, guarded - empty) / number * 1e9


# --- report --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured gateway run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--only", choices=("gateway", "processor"), action="append")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink(args.sink)
        return

    print("== tracing: OpenTelemetry on (OTLP/HTTP to a local sink) and off, side by side")
    common.print_machine()
    ensure_exporter()
    only = set(args.only or ("gateway", "processor"))
    sink = Sink()
    try:
        gw = gateway_phases(args, sink) if "gateway" in only else {}
        pr = processor_phases(args, sink) if "processor" in only else {}
    finally:
        sink.close()
    guard = guard_ns()

    rows = []

    def row(what: str, results: dict[str, dict[str, Any]], field: str, fmt: str, ratios: bool = True) -> None:
        off, on, sampled = (float(results[p][field]) for p in PHASES)
        cells = [fmt.format(off), fmt.format(on), fmt.format(sampled)]
        rows.append([what, *cells, *((f"{on / off:.2f}", f"{sampled / off:.2f}") if ratios and off else ("", ""))])

    if gw:
        row("gateway accepted/s", gw, "ok_per_s", "{:,.0f}")
        row("gateway p50 ms", gw, "p50_ms", "{:.2f}")
        row("gateway p99 ms", gw, "p99_ms", "{:.2f}")
        row("gateway spans exported", gw, "spans", "{:,.0f}", ratios=False)
    if pr:
        row("processor records/s", pr, "per_s", "{:,.0f}")
        row("processor spans exported", pr, "spans", "{:,.0f}", ratios=False)
    print()
    print(f"tracing off (as shipped), on (OTLP/HTTP, batch span processor), on with {SAMPLED:.0%} of traces sampled:")
    print(common.table(["", "off", "on", f"sampled {SAMPLED:.0%}", "on / off", "sampled / off"], rows))
    shares = {}
    if gw:
        shares["request"] = guard / (1e9 / gw["off"]["ok_per_s"])
    if pr:
        shares["record"] = guard / (1e9 / pr["off"]["per_s"])
    per = "; ".join(f"{share:.4%} of a {what}'s time at the measured rate" for what, share in shares.items())
    print(f"off: the `if tracing.ENABLED` guard costs {guard:.1f} ns per request or record ({per})")

    info = []
    for what, results, field in (("gateway accepted/s", gw, "ok_per_s"), ("processor records/s", pr, "per_s")):
        if results:
            off = results["off"][field]
            info.append(
                f"info: tracing on vs off, {what}: {results['on'][field] / off:.2f} ×, "
                f"{SAMPLED:.0%} sampled {results['sampled'][field] / off:.2f} × (no goal: the SDK's cost per span)"
            )
    targets = [
        common.Target(
            f"tracing off, the hot path's flag test per {what}",
            share * 100,
            GOAL_OFF_SHARE * 100,
            "%",
            higher_is_better=False,
            fmt="{:.4f}",
        )
        for what, share in shares.items()
    ]
    common.save(
        "tracing",
        {"gateway": gw, "processor": pr, "guard_ns": guard, "info": info, "targets": [t.line() for t in targets]},
    )
    common.finish(targets, info)


if __name__ == "__main__":
    main()
