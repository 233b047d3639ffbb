"""A reconciler killed after a dead letter was acknowledged and before its expectation's tombstone
was: the restarted reconciler finds the letter in the DLQ (it reads back its own letters, as a
table) and tombstones the expectation without writing a second letter (issue 13).

The TCP proxy (embedded broker only) holds that window open: with 1 s of latency each way, the
tombstone is on its way for a second after the reconciler logged the acknowledged letter, and what a
killed process sent that has not landed is lost with its connection. The reconciler's session is
longer than usual, so that heartbeats slowed by the proxy do not make its group rebalance meanwhile.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
import yaml

from processors.kafka import embedded
from tests.conftest import serving_app, wait_until
from tests.e2e.brokers import Broker
from tests.e2e.pipeline import Pipeline
from tests.e2e.test_reconcile_kills import API_KEY, ProviderApi, _approved, _expect, _given_up, _tombstoned


@pytest.fixture
def api() -> Iterator[tuple[ProviderApi, str]]:
    fake = ProviderApi()
    with serving_app(fake.app()) as url:
        yield fake, url


def _logged(pipeline: Pipeline, role_name: str, event: str) -> Callable[[], bool]:
    role = next(r for r in pipeline.roles if r.name == role_name)
    return lambda: any(e.get("event") == event for e in role.log_events())


def test_a_reconciler_killed_between_a_dead_letter_and_its_tombstone_writes_the_letter_once(
    make_pipeline: Callable[..., Pipeline], e2e_broker: Broker, api: tuple[ProviderApi, str]
) -> None:
    proxy = e2e_broker.proxy
    if proxy is None:
        pytest.skip("needs the TCP proxy (embedded broker) to hold the reconciler inside that window")
    fake, api_url = api
    pipeline = make_pipeline()
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["gateway"]["expectations_api_keys"] = [API_KEY]
    poll = {"base_url": api_url, "token": "api-token", "window_s": 1}
    config["sources"]["xendit"]["poll"] = poll
    config["sources"]["signicat"]["poll"] = poll | {"give_up_after_s": 6}
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "KYCSTREAM_RECONCILE__GROUP_ID": f"{pipeline.group}-reconciler",
        "KYCSTREAM_RECONCILE__METRICS_PORT": str(embedded.free_port()),
        "KYCSTREAM_RECONCILE__SESSION_TIMEOUT_MS": "10000",
    }
    reconciler = pipeline.role("reconciler", ["reconcile"], env)
    pipeline.start()
    reconciler.start()
    warm_up, given_up = f"acct-{uuid.uuid4().hex[:8]}", f"proc-{uuid.uuid4().hex[:8]}"
    _expect(pipeline, "xendit", warm_up)  # its answer opens the producer's connection to the broker
    wait_until(lambda: _approved(pipeline, [warm_up]), 60, "the warm-up expectation polled to its result")
    _expect(pipeline, "signicat", given_up, {"dossierId": "dossier-1"})
    wait_until(lambda: fake.polls[given_up], 30, "the Signicat process polled (404) before it is given up on")
    proxy.latency = 1.0
    proxy.delay_open_links(1.0)
    try:
        wait_until(_logged(pipeline, "reconciler", "reconcile_dead_letter"), 60, "the letter acknowledged", every=0.05)
        assert reconciler.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
    finally:
        proxy.latency = 0.0
        proxy.delay_open_links(0)
    key = f"signicat:{given_up}"
    assert len(_given_up(pipeline)) == 1 and not _tombstoned(pipeline, [key]), "killed inside the window"

    reconciler.start()
    wait_until(lambda: _tombstoned(pipeline, [key]), 60, "the given-up expectation tombstoned after the restart")
    letters = _given_up(pipeline)
    assert len(letters) == 1, f"{len(letters)} poll_expired letters for {key}"
