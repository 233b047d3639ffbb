"""The spool under steady load, with the gateway and processor as the CLI runs them: 300 Signicat
deliveries per second (a spooling source) across a 5 s Kafka cut. Once Kafka answers again,
deliveries of verifications with nothing spooled go straight to it while the forwarder drains the
spool in order, so the spool empties within seconds and stays empty; every delivery is one event.

The load comes from a process of its own that writes pre-built requests on keep-alive connections
(no HTTP library on the hot path): on these two cores an httpx client topped out near 150/s."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.brokers import Broker
from tests.e2e.pipeline import Pipeline
from tests.e2e.workload import sign

pytestmark = pytest.mark.slow

RATE, BEFORE_S, CUT_S, AFTER_S = 300, 3.0, 5.0, 12.0
CONNECTIONS = 64


def _request(port: int, i: int) -> bytes:
    body = json.dumps({"processId": f"load-{i:05d}", "dossierId": "d-1", "status": "accepted"}).encode()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", **sign("signicat", body)}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /webhooks/signicat HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def paced_posts(port: int, rate: int, total: int, answers: Any) -> None:
    """POST `total` Signicat deliveries at `rate` per second over CONNECTIONS keep-alive connections;
    sends back (the pace reached, [(sent at, status)] in order of i). Run in a process of its own."""
    requests = [_request(port, i) for i in range(total)]

    async def run() -> tuple[float, list[tuple[float, int]]]:
        due: asyncio.Queue[int] = asyncio.Queue()
        results: list[tuple[float, int]] = [(0.0, 0)] * total

        async def connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while (i := await due.get()) >= 0:
                sent = time.monotonic()
                writer.write(requests[i])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                results[i] = (sent, status)
            writer.close()

        workers = [asyncio.create_task(connection()) for _ in range(CONNECTIONS)]
        start = time.monotonic()
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # sleep: pacing the load
            due.put_nowait(i)
        for _ in workers:
            due.put_nowait(-1)
        await asyncio.gather(*workers)
        last_sent = max(sent for sent, _ in results)
        return total / (last_sent - start), results

    answers.send(asyncio.run(run()))


def test_the_spool_drains_under_steady_load_while_new_deliveries_go_straight_to_kafka(
    make_pipeline: Callable[..., Pipeline], e2e_broker: Broker, note: Callable[[str], None]
) -> None:
    if not e2e_broker.can_fail:
        pytest.skip(f"cannot take a {e2e_broker.kind} broker down")
    pipeline = make_pipeline(spool_all=True)
    pipeline.create_topics()
    pipeline.start_gateway()
    spool = pipeline.workdir / "spool"
    total = int(RATE * (BEFORE_S + CUT_S + AFTER_S))
    samples: list[tuple[float, bool]] = []  # (time, the spool holds records), every 50 ms
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            samples.append((time.monotonic(), any(spool.glob("segment-*.spool"))))

    spawn = multiprocessing.get_context("spawn")
    received, sent = spawn.Pipe(duplex=False)
    client = spawn.Process(target=paced_posts, args=(pipeline.port, RATE, total, sent), daemon=True)
    client.start()
    try:
        wait_until(lambda: (pipeline.gateway_metric("kycstream_gateway_requests_total") or 0) > 0, 60, "load started")
        threading.Thread(target=sample, daemon=True).start()
        time.sleep(BEFORE_S)  # sleep: the load before the fault
        with e2e_broker.outage():
            cut_at = time.monotonic()
            time.sleep(CUT_S)  # sleep: the outage's duration
            restored_at = time.monotonic()
        wait_until(received.poll, 120, "the load sent")
        achieved, results = received.recv()
        ended = time.monotonic()
        sampling.set()
    finally:
        client.join(10)
        if client.is_alive():
            client.kill()
    statuses = [status for _, status in results]
    assert statuses == [200] * total, Counter(statuses)
    during = sum(cut_at <= at < restored_at for at, _ in results)
    wait_until(lambda: pipeline.gateway_metric("kycstream_gateway_spool_records") == 0, 60, "the spool forwarded")
    spooled = pipeline.gateway_metric("kycstream_gateway_spool_forwarded_total") or 0
    held = [t for t, holds in samples if holds and t > restored_at]
    emptied = max(held, default=restored_at)
    note(
        f"{total} deliveries at {achieved:.0f}/s ({during} during the {CUT_S:.0f} s cut), {spooled:.0f} spooled; "
        f"the spool empty {emptied - restored_at:.2f} s after Kafka's return, then for {ended - emptied:.1f} s"
    )
    assert achieved >= 0.9 * RATE, f"the client reached {achieved:.0f}/s, not {RATE}/s: the figure would say nothing"
    assert spooled >= during * 0.9, "the cut made the gateway spool what came in during it"
    assert emptied - restored_at < 5, f"the spool held records {emptied - restored_at:.1f} s after Kafka's return"
    assert ended - emptied > 5, "the spool stayed empty under load for the rest of the run"

    pipeline.start_processor(wait_owned=pipeline.topics.partitions)
    wanted = {f"load-{i:05d}" for i in range(total)}
    wait_until(lambda: len(pipeline.records("events")) >= total, 180, "every delivery became an event")
    events = pipeline.decoded("events")
    assert Counter(e["verification_id"] for e in events) == Counter(wanted), "one event per delivery"
