"""The processor's probes see its run loop: ready once its partitions are restored, alive while the
loop goes round, 503 from /livez while one step of it is stuck in a retry."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from processors import probes
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import processing, reconciling, wait_until

pytestmark = pytest.mark.broker


def test_the_processor_liveness_fails_while_its_loop_is_stuck_and_recovers_when_it_goes_round(
    kafka: KafkaSettings, topic_settings: TopicSettings
) -> None:
    # The shortest liveness deadline the limits allow: above restore_timeout_s and delivery + flush.
    timeouts = {"restore_timeout_s": 3.0, "delivery_timeout_s": 1.0, "flush_timeout_s": 0.5, "liveness_timeout_s": 3.5}
    with processing(kafka, topic_settings, **timeouts) as normalizer:
        server = probes.serve(0, normalizer.health, normalizer.metrics.registry, host="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}"
        try:

            def status(path: str) -> int:
                return httpx.get(f"{url}{path}", timeout=5).status_code

            wait_until(lambda: status("/readyz") == 200, 30, "ready: partitions assigned and restored")
            assert status("/livez") == 200
            release = threading.Event()

            def retry_forever(force: bool = False) -> int:  # a step of the loop that never succeeds
                while not release.wait(0.05):
                    pass
                return 0

            normalizer.engine.expire = retry_forever  # type: ignore[method-assign]
            wait_until(lambda: status("/livez") == 503, 15, "/livez 503 while the loop is stuck")
            assert status("/readyz") == 200  # stuck is for liveness to restart; readiness says nothing new
            release.set()
            del normalizer.engine.expire
            wait_until(lambda: status("/livez") == 200, 15, "/livez 200 once the loop goes round again")
        finally:
            server.shutdown()
            server.server_close()


def test_the_reconciler_is_ready_once_its_tables_are_read_whole_and_alive_while_its_loop_goes_round(
    kafka: KafkaSettings, topic_settings: TopicSettings
) -> None:
    sources = {"esign": {"provider": "esign", "poll": {"base_url": "http://127.0.0.1:9", "token": "api-token"}}}
    with reconciling(kafka, topic_settings, sources) as reconciler:
        server = probes.serve(0, reconciler.health, reconciler.metrics.registry, host="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 30, "ready: tables whole")
            ready_at = time.monotonic()
            # A beat after ready_at (the health clock is time.monotonic): when the last one was, not
            # how long ago, which a beat just before the first reading would make near zero.
            wait_until(
                lambda: time.monotonic() - reconciler.health.since_beat() > ready_at, 10, "the run loop beats again"
            )
            assert httpx.get(f"{url}/livez", timeout=5).json()["status"] == "ok"
        finally:
            server.shutdown()
            server.server_close()
