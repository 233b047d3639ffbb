"""Focused fault tests: one fault, made to happen at a known moment, and its exact consequence.

They reproduce, deterministically, the two bugs the soaks found: the gateway answering 503 for good
after an outage longer than produce_timeout_s (fixed in 99993b8; before, a strict xfail here on the
embedded broker) and a state counting events twice after a crash (fixed in 0502bd1; this test failed
on e2234ec with 12 of 20 states counting 2).
"""

from __future__ import annotations

import signal
import time

import httpx
import orjson
import pytest

from tests.e2e.brokers import Broker
from tests.e2e.pipeline import SIGNICAT_DEADLINE_S, Pipeline
from tests.e2e.workload import sign


def _xendit(vid: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"event": "account.verification", "data": {"id": vid, "kyc": {"status": "PASSED"}}})
    return body, {"content-type": "application/json", "webhook-id": f"wh-{vid}", **sign("xendit", body)}


def test_gateway_accepts_again_once_kafka_is_back(pipeline: Pipeline, e2e_broker: Broker) -> None:
    """One delivery before the outage (200), one during (503 in time), then Kafka is back: 200 again."""
    if not e2e_broker.can_fail:
        pytest.skip(f"cannot take a {e2e_broker.kind} broker down")
    url = f"{pipeline.url}/webhooks/xendit"
    body, headers = _xendit("outage-1")
    assert httpx.post(url, content=body, headers=headers, timeout=15).status_code == 200
    with e2e_broker.outage():
        started = time.monotonic()
        during = httpx.post(url, content=body, headers=headers, timeout=15)
        answered_in = time.monotonic() - started
        time.sleep(1)
    assert during.status_code == 503 and during.json()["error"] == "kafka_unavailable", during.text
    assert during.headers.get("retry-after"), "a 503 tells the provider when to retry"
    assert answered_in < SIGNICAT_DEADLINE_S, answered_in
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = httpx.post(url, content=body, headers=headers, timeout=15)
        seen.append(response.status_code)
        if response.status_code == 200:
            return
        time.sleep(1)
    raise AssertionError(
        f"Kafka is back but for 20 s the gateway answered {sorted(set(seen))} "
        f"(last: {response.text}); /readyz says {pipeline.readyz()}"
    )


def test_state_counts_each_event_once_after_a_crash_before_the_dedup_records(
    pipeline: Pipeline, e2e_broker: Broker
) -> None:
    """SIGKILL the processor when a batch's events and states are in Kafka but its dedup records are
    not: the restarted processor must not write any event twice, nor count any event twice."""
    proxy = e2e_broker.proxy
    if proxy is None:
        pytest.skip("needs the TCP proxy (embedded broker) to hold the processor inside that window")
    latency = 1.0  # each way: events reach Kafka 1 s after they are produced, acks come 1 s later
    count = 20
    pipeline.processor.send(signal.SIGSTOP)  # the deliveries go in at full speed, then the processor
    try:  # takes them through the slow link
        with httpx.Client(base_url=pipeline.url, timeout=15) as client:
            for i in range(count):
                body, headers = _xendit(f"crash-{i:03d}")
                assert client.post("/webhooks/xendit", content=body, headers=headers).status_code == 200
    finally:
        proxy.latency = latency
        pipeline.processor.send(signal.SIGCONT)
    try:
        # kycstream_events_total counts an event when it is produced (before its acknowledgement).
        deadline = time.monotonic() + 60
        while (pipeline.processor_metric("kycstream_events_total") or 0) < count:
            assert time.monotonic() < deadline, "the processor did not produce the events"
            time.sleep(0.05)
        time.sleep(latency * 1.4)  # the events and states have reached Kafka; their acks have not come back
        assert pipeline.processor.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
    finally:
        proxy.latency = 0.0
    pipeline.start_processor(wait_owned=pipeline.topics.partitions, timeout=60)
    deadline = time.monotonic() + 30
    while (pipeline.processor_metric("kycstream_restore_repaired_events_total") or 0) < 1:
        assert time.monotonic() < deadline, "the restart repaired nothing: the kill missed its window"
        time.sleep(0.2)
    repaired = pipeline.processor_metric("kycstream_restore_repaired_events_total")

    deadline = time.monotonic() + 30
    while len(pipeline.records("events")) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # anything written twice would arrive now
    events = pipeline.decoded("events")
    assert len(events) == len({e["event_id"] for e in events}) == count, "each event exactly once"
    states = pipeline.latest_states()
    assert len(states) == count and {s["status"] for s in states.values()} == {"APPROVED"}
    wrong = {k: s["event_count"] for k, s in states.items() if s["event_count"] != 1}
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {count} states count their single event more than once after the restart "
            f"repaired {repaired:g} events: {dict(list(wrong.items())[:5])}"
        )
