"""The probes server: /livez from the main loop's heartbeat, /readyz from what the role says, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from processors import probes


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture
def health(clock: list[float]) -> probes.Health:
    return probes.Health(deadline_s=300, clock=lambda: clock[0])


@pytest.fixture
def url(health: probes.Health) -> Iterator[str]:
    registry = CollectorRegistry()
    Counter("kycstream_probe_test", "A metric of the served registry.", registry=registry).inc()
    server = probes.serve(0, health, registry, host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_loop_that_goes_round_is_alive(url: str, health: probes.Health, clock: list[float]) -> None:
    for _ in range(10):  # each iteration beats; the probe comes between two
        clock[0] += 299
        health.beat()
    clock[0] += 299
    answer = httpx.get(f"{url}/livez")
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "since_beat_s": 299}


def test_a_loop_stuck_in_a_retry_fails_its_liveness_probe(url: str, health: probes.Health, clock: list[float]) -> None:
    health.beat()
    clock[0] += 300.5  # still in the retry: no beat since
    answer = httpx.get(f"{url}/livez")
    assert answer.status_code == 503
    assert answer.json() == {"status": "stuck", "since_beat_s": 300.5, "deadline_s": 300}
    health.beat()  # went round again
    assert httpx.get(f"{url}/livez").status_code == 200


def test_readiness_is_what_the_role_says(url: str, health: probes.Health) -> None:
    assert httpx.get(f"{url}/readyz").json() == {"status": "unready", "reason": "starting"}
    health.not_ready("restoring partitions [0, 1]")
    answer = httpx.get(f"{url}/readyz")
    assert answer.status_code == 503 and answer.json()["reason"] == "restoring partitions [0, 1]"
    health.ready()
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_metrics_are_served_beside_the_probes(url: str) -> None:
    assert "kycstream_probe_test_total 1.0" in httpx.get(f"{url}/metrics").text
