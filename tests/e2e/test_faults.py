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

from tests.conftest import committed_to_end, wait_until
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
        time.sleep(1)  # sleep: a fault's duration (Kafka stays down a second after the 503)
    assert during.status_code == 503 and during.json()["error"] == "kafka_unavailable", during.text
    assert during.headers.get("retry-after"), "a 503 tells the provider when to retry"
    assert answered_in < SIGNICAT_DEADLINE_S, answered_in
    seen: list[httpx.Response] = []

    def accepted() -> bool:  # a provider retrying once a second
        seen.append(httpx.post(url, content=body, headers=headers, timeout=15))
        return seen[-1].status_code == 200

    wait_until(
        accepted,
        20,
        lambda: (
            f"a 200 once Kafka is back: the gateway answered {sorted({r.status_code for r in seen})} "
            f"(last: {seen[-1].text}); /readyz says {pipeline.readyz()}"
        ),
        every=1,
    )


def _events_without_dedup_record(pipeline: Pipeline) -> bool:
    events = pipeline.decoded("events")  # first: a dedup record landing meanwhile is seen below
    recorded = {d["idempotency_key"] for d in pipeline.decoded("dedup")}
    return any(e["idempotency_key"] not in recorded for e in events)


def test_state_counts_each_event_once_after_a_crash_before_the_dedup_records(
    pipeline: Pipeline, e2e_broker: Broker
) -> None:
    """SIGKILL the processor when a batch's events and states are in Kafka but its dedup records are
    not: the restarted processor must not write any event twice, nor count any event twice."""
    proxy = e2e_broker.proxy
    if proxy is None:
        pytest.skip("needs the TCP proxy (embedded broker) to hold the processor inside that window")
    count = 20
    with httpx.Client(base_url=pipeline.url, timeout=15) as client:  # the processor's producer connects
        body, headers = _xendit("crash-warm-up")  # when it first produces: have it open before the delay
        assert client.post("/webhooks/xendit", content=body, headers=headers).status_code == 200
    wait_until(lambda: len(pipeline.records("dedup")) == 1, 60, "the warm-up delivery was processed")
    count += 1
    pipeline.processor.send(signal.SIGSTOP)  # the deliveries go in at full speed; then the processor
    try:  # takes them through its slowed connections
        with httpx.Client(base_url=pipeline.url, timeout=15) as client:
            for i in range(count - 1):
                body, headers = _xendit(f"crash-{i:03d}")
                assert client.post("/webhooks/xendit", content=body, headers=headers).status_code == 200
        # A batch's events land 2 s after it produced them, their acks come 2 s later, its dedup
        # records would land 2 s after that, but what the processor sent that has not landed when
        # it is killed is lost: from the first event landed to the kill, no dedup record can land.
        proxy.delay_open_links(2.0)
    finally:
        pipeline.processor.send(signal.SIGCONT)
    try:
        wait_until(  # the delayed links can time the group session out: a rejoin and a restore first
            lambda: _events_without_dedup_record(pipeline),
            150,
            "an event landed in Kafka while its dedup record had not",
            every=0.05,
        )
        assert pipeline.processor.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
    finally:
        proxy.delay_open_links(0)
    pipeline.start_processor(wait_owned=pipeline.topics.partitions, timeout=60)
    wait_until(
        lambda: (pipeline.processor_metric("kycstream_restore_repaired_events_total") or 0) >= 1,
        30,
        "the restart repaired the events that had no dedup record",
    )
    repaired = pipeline.processor_metric("kycstream_restore_repaired_events_total")
    wait_until(
        lambda: committed_to_end(pipeline.kafka, pipeline.group, pipeline.topics.raw),
        60,
        "the restarted processor committed the raw topic",
    )
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
