"""Load and faults through the real processes: a fixed-rate soak with repeats across all providers, and
the same soak with the processor SIGKILLed, Kafka unreachable, or the gateway SIGTERMed in the middle.

Each test comes in two sizes: `ci` (part of `make e2e`) and `60s` (marked slow; the issue's soak).
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import committed_to_end, wait_until
from tests.e2e.brokers import Broker
from tests.e2e.pipeline import SIGNICAT_DEADLINE_S, Pipeline, gateway_status_ok
from tests.e2e.workload import LoadGenerator, Workload, build_workload, verify, wait_for_outputs


@dataclass(frozen=True)
class Soak:
    seconds: float
    rate: float  # deliveries per second, all providers together

    @property
    def total(self) -> int:
        return int(self.seconds * self.rate)


SIZES = [
    pytest.param(Soak(12, 40), id="ci"),
    pytest.param(Soak(60, 50), id="60s", marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
]


@dataclass
class MemorySampler:
    """RSS of the gateway and the processor (whichever process currently plays the role), every 0.5 s."""

    pipeline: Pipeline
    samples: list[tuple[float, int | None, int | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemorySampler:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic(), _rss(self.pipeline.gateway.pid), _rss(self.pipeline.processor.pid)))

    def series(self, role: int) -> list[tuple[float, int]]:
        return [(s[0], s[role]) for s in self.samples if s[role] is not None]  # type: ignore[misc]


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def soak(
    pipeline: Pipeline,
    size: Soak,
    seed: int,
    note: Callable[[str], None],
    fault: Callable[[LoadGenerator], dict[str, Any]] | None = None,
    fault_at: float = 1 / 3,
) -> tuple[Workload, LoadGenerator, dict[str, Any], MemorySampler]:
    """Send the workload at a fixed rate; run `fault` once a third of it is sent; wait for the outputs; verify."""
    workload = build_workload(size.total, seed)
    sampler = MemorySampler(pipeline).start()
    gen = LoadGenerator(pipeline.url, workload.deliveries, size.rate, give_up_s=size.seconds + 120).start()
    facts: dict[str, Any] = {}
    try:
        if fault is not None:
            at = int(size.total * fault_at)
            wait_until(lambda: gen.sent >= at, size.seconds + 30, f"{at} of {size.total} deliveries sent", every=0.05)
            facts = fault(gen)
        gen.join()
        finished = time.monotonic()
        wait_for_outputs(pipeline, workload, gen)
        settled = time.monotonic()
        wait_until(  # then whatever the processor writes for the raw topic's records is in
            lambda: committed_to_end(pipeline.kafka, pipeline.group, pipeline.topics.raw),
            120,
            "the processor committed the raw topic",
        )
    finally:
        sampler.stop()
        gen.stop()  # after a failure: no more traffic from this test into the next ones
    summary = verify(pipeline, workload, gen)
    summary |= {
        "sending_s": round(finished - gen.started_at, 1),
        "outputs_after_s": round(settled - finished, 1),
        "answered_within_s": round(max(a.ended - a.started for a in gen.attempts if a.status is not None), 2),
        "client_lag_s": round(max((late for _, late in gen.lag), default=0.0), 2),
    }
    note(
        f"{summary['deliveries']} deliveries ({summary['repeats']} repeats) at {size.rate:g}/s, sent in "
        f"{summary['sending_s']}s; attempts {summary['statuses']}; raw {summary['raw_records']}, events "
        f"{summary['events']}, states {summary['states']}, dead letters {summary['dead_letters']}; outputs "
        f"complete {summary['outputs_after_s']}s after the last 200; slowest answer {summary['answered_within_s']}s "
        f"(the client's own loop lagged up to {summary['client_lag_s']}s)" + (f"; {facts}" if facts else "")
    )
    answered = [a for a in gen.attempts if a.status is not None]
    slow = [a for a in answered if a.ended - a.started >= SIGNICAT_DEADLINE_S]
    assert not slow, f"{len(slow)} answers took {SIGNICAT_DEADLINE_S:g}s or more, e.g. {slow[0]}"
    return workload, gen, summary, sampler


def _growth(series: list[tuple[float, int]]) -> tuple[int, int, int]:
    """(RSS at the middle of the run, RSS at the end, growth in the second half): medians of 5 samples."""
    values = [v for _, v in series]
    mid = len(values) // 2
    at_mid = statistics.median_low(values[max(0, mid - 2) : mid + 3])
    at_end = statistics.median_low(values[-5:])
    return at_mid, at_end, at_end - at_mid


@pytest.mark.parametrize("size", SIZES)
def test_soak_with_repeats_across_all_providers(pipeline: Pipeline, size: Soak, note: Callable[[str], None]) -> None:
    """Every 200 has its raw record; one event per result; right states and dead letters; memory flat."""
    _, _, summary, sampler = soak(pipeline, size, seed=1, note=note)
    assert set(summary["statuses"]) == {"200"}, "nothing but 200 when nothing fails"
    assert summary["sending_s"] < size.seconds * 1.5, "the gateway kept up with the fixed rate"
    # Memory: from the middle of the run to its end, neither process may grow by more than 6 MiB.
    # Measured here (60 s at 50/s, ~1500 deliveries in the second half): gateway +0.1 MiB, processor
    # +0.5 MiB; the processor legitimately keeps every idempotency key (7-day window) and every
    # verification's state, ~400 bytes per new result. 6 MiB catches a leak of about 4 KiB per
    # delivery over 60 s (a body, a future or a metrics child kept per request), or a steady drift;
    # smaller leaks need longer runs. The `ci` size (12 s) only catches gross leaks (~25 KiB each).
    half = size.total // 2
    for role, name in ((1, "gateway"), (2, "processor")):
        series = sampler.series(role)
        assert len(series) >= 10, f"too few memory samples of the {name}"
        at_mid, at_end, growth = _growth(series)
        note(
            f"{name} RSS: mid {at_mid / 2**20:.1f} MiB, end {at_end / 2**20:.1f} MiB, growth "
            f"{growth / 2**20:+.1f} MiB ({growth / half:+.0f} bytes per delivery of the second half)"
        )
        assert growth <= 6 * 2**20, f"the {name}'s memory grew by {growth / 2**20:.1f} MiB in the second half"


@pytest.mark.parametrize("size", SIZES)
def test_processor_sigkill_mid_soak_loses_and_doubles_nothing(
    pipeline: Pipeline, size: Soak, note: Callable[[str], None]
) -> None:
    """No event lost or written twice; every state right, each event counted once."""

    def kill_and_restart(gen: LoadGenerator) -> dict[str, Any]:
        killed_at = pipeline.processor_metric("kycstream_events_total")
        code = pipeline.processor.stop(signal.SIGKILL, timeout=10)
        assert code == -signal.SIGKILL
        time.sleep(1)  # sleep: a fault's duration (the processor stays dead a second under load)
        pipeline.start_processor()  # the same group: it waits for the dead member's session to expire
        return {"events_before_kill": killed_at}

    soak(pipeline, size, seed=2, note=note, fault=kill_and_restart)
    repaired = pipeline.processor_metric("kycstream_restore_repaired_events_total")
    note(f"events repaired by the restore after the kill: {repaired}")


@pytest.mark.parametrize("size", SIZES)
def test_broker_unreachable_mid_soak_gives_503_never_200(
    pipeline: Pipeline, e2e_broker: Broker, size: Soak, note: Callable[[str], None]
) -> None:
    """While Kafka is unreachable the gateway says 503 (within the deadline), never 200; every delivery
    retried by the load generator ends up exactly once."""
    if not e2e_broker.can_fail:
        pytest.skip(f"cannot take a {e2e_broker.kind} broker down (set no KAFKA_BOOTSTRAP_SERVERS to test it)")
    outage_s = 8.0 if size.seconds < 30 else 15.0  # longer than gateway.produce_timeout_s (5 s)
    ready: list[int] = []

    def outage(gen: LoadGenerator) -> dict[str, Any]:
        with e2e_broker.outage():
            down = time.monotonic()
            while time.monotonic() < down + outage_s:
                ready.append(pipeline.readyz())
                time.sleep(0.5)  # sleep: a fault's duration (the outage, /readyz sampled every 0.5 s)
            up = time.monotonic()
        # While it was down: 503 (kafka_unavailable) in time, never 200.
        during = [a for a in gen.attempts if a.started >= down and a.ended <= up]
        assert during, "no delivery was attempted during the outage"
        accepted = [a for a in during if a.status == 200]
        assert not accepted, f"{len(accepted)} deliveries answered 200 while Kafka was unreachable: {accepted[:3]}"
        # 503, or the source's own refusal status: Signicat's is 429 (a >= 500 delays ReadID's later callbacks)
        assert {a.status for a in during} <= {503, 429, None}, {a.status for a in during}
        assert all(b"kafka_unavailable" in a.body for a in during if a.status == 429)
        assert any(a.status == 503 and b"kafka_unavailable" in a.body for a in during), "the gateway never said 503"
        assert 503 in ready, f"/readyz stayed ready during the outage: {ready}"
        # Once it is back, the gateway accepts again.
        back = time.monotonic()
        wait_until(  # on failure soak() stops the load generator
            lambda: any(a.status == 200 and a.started >= back for a in list(gen.attempts)),
            30,
            lambda: (
                f"a 200 once Kafka is back: the gateway answered "
                f"{dict(Counter(a.status for a in list(gen.attempts) if a.started >= back))}; "
                f"/readyz says {pipeline.readyz()}"
            ),
            every=0.2,
        )
        return {
            "outage_s": round(up - down, 1),
            "readyz_during": sorted(set(ready)),
            "accepting_again_after_s": round(time.monotonic() - back, 1),
        }

    soak(pipeline, size, seed=3, note=note, fault=outage, fault_at=0.25)
    assert pipeline.readyz() == 200


@pytest.mark.parametrize("size", SIZES)
def test_gateway_sigterm_mid_soak_acknowledges_nothing_without_its_raw_record(
    make_pipeline: Callable[..., Pipeline], e2e_broker: Broker, size: Soak, note: Callable[[str], None]
) -> None:
    """SIGTERM while requests are in flight: they finish (200, with their raw record) or are refused
    cleanly (503 / connection refused or closed), and are retried against the restarted gateway."""
    pipeline = make_pipeline().start()
    proxy = e2e_broker.proxy
    moments: dict[str, float] = {}

    def sigterm(gen: LoadGenerator) -> dict[str, Any]:
        if proxy is not None:  # slow Kafka down so that many requests are in flight at the signal
            proxy.latency = 0.3
            wait_until(lambda: gen.in_flight >= 10, 30, "10 requests in flight behind the slowed link", every=0.05)
        moments["sigterm"] = time.monotonic()
        pipeline.gateway.send(signal.SIGTERM)
        try:
            code = pipeline.gateway.wait(40)
        finally:
            if proxy is not None:
                proxy.latency = 0.0
        moments["exited"] = time.monotonic()
        assert gateway_status_ok(code), f"gateway exit code {code}\n{pipeline.gateway.tail()}"
        stopped = [e for e in pipeline.gateway.log_events() if e.get("event") == "gateway_stopped"]
        assert stopped and stopped[-1]["undelivered"] == 0, f"the gateway did not drain\n{pipeline.gateway.tail()}"
        pipeline.start_gateway()
        moments["restarted"] = time.monotonic()
        return {
            "exit_code": code,
            "stopped_log": stopped,
            "down_s": round(moments["restarted"] - moments["sigterm"], 1),
        }

    _, gen, _, _ = soak(pipeline, size, seed=4, note=note, fault=sigterm)
    in_flight = [a for a in gen.attempts if a.started < moments["sigterm"] < a.ended]
    during = [a for a in gen.attempts if moments["sigterm"] <= a.started < moments["restarted"]]
    statuses = {a.status if a.status is not None else a.error for a in in_flight + during}
    note(
        f"at the SIGTERM: {len(in_flight)} in flight -> {Counter(a.status or a.error for a in in_flight)}; "
        f"until restarted: {Counter(a.status or a.error for a in during)}"
    )
    allowed = {200, 503, "ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}
    assert statuses <= allowed, f"unclean answers around the SIGTERM: {statuses - allowed}"
    if proxy is not None:
        finished = [a for a in in_flight if a.status == 200]
        assert len(finished) >= 5, f"expected requests in flight at the SIGTERM to finish: {len(in_flight)} in flight"
    assert any(a.status is None for a in during), "no delivery found the gateway down (the test did not bite)"


SPOOL_SIZES = [
    pytest.param(Soak(24, 40), 10.0, id="ci"),
    pytest.param(Soak(90, 50), 60.0, id="60s", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
]


@pytest.mark.parametrize(("size", "outage_s"), SPOOL_SIZES)
def test_spooling_sources_answer_200_through_an_outage_and_two_gateway_sigkills(
    make_pipeline: Callable[..., Pipeline], e2e_broker: Broker, size: Soak, outage_s: float, note: Callable[[str], None]
) -> None:
    """Every source spools: while Kafka is unreachable, and across two SIGKILLs of the gateway during
    the outage, every answer is 200 (or no answer while the gateway is down, retried); once Kafka is
    back every accepted delivery is exactly one event, none missing, none doubled."""
    if not e2e_broker.can_fail:
        pytest.skip(f"cannot take a {e2e_broker.kind} broker down")
    pipeline = make_pipeline(spool_all=True).start()

    def outage(gen: LoadGenerator) -> dict[str, Any]:
        kills = []
        with e2e_broker.outage():
            down = time.monotonic()
            for share in (1 / 3, 2 / 3):  # two SIGKILLs, each once more deliveries were spooled
                time.sleep(max(0.0, down + outage_s * share - time.monotonic()))  # sleep: a fault's duration
                spooled = pipeline.gateway_metric("kycstream_gateway_spool_records")
                assert pipeline.gateway.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
                pipeline.start_gateway()  # the same spool directory: it forwards what the last one spooled
                kills.append(spooled)
            time.sleep(max(0.0, down + outage_s - time.monotonic()))  # sleep: a fault's duration (the rest)
            up = time.monotonic()
        during = [a for a in gen.attempts if a.started >= down and a.ended <= up]
        assert during and {a.status for a in during} <= {200, None}, Counter(a.status for a in during)
        assert any(a.status == 200 and b'"spooled":true' in a.body for a in during), "nothing was spooled"
        wait_until(lambda: pipeline.gateway_metric("kycstream_gateway_spool_records") == 0, 120, "the spool forwarded")
        return {"outage_s": round(up - down, 1), "spooled_at_the_kills": kills}

    soak(pipeline, size, seed=5, note=note, fault=outage, fault_at=0.1)
