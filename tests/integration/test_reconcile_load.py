"""A reconciler with many due expectations keeps its groups, polls each at its source's rate,
fetches a notice's result while it polls, and after a restart polls nothing before it is due again.

The status API is a local fake that answers 404 (not found yet: nothing to write) and notes when
each verification was asked for; Incode's result API is the local stand-in."""

from __future__ import annotations

import bisect
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processors.avro.records import event_to_record, expectation_from_record, expectation_to_record
from processors.kafka import config, reader
from processors.kafka.serde import Codec
from processors.model import Expectation, VerificationEvent, VerificationStatus
from processors.reconcile.reconciler import Reconciler
from processors.reconcile.standin import DEV_ADMIN_TOKEN, DEV_API_KEY, IncodeStandIn
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import committed_to_end, reconciling, serving_app, unique, wait_until

pytestmark = pytest.mark.broker


class StatusApi:
    """Xendit's account API, answering that it does not know the account yet."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, str]] = []  # (monotonic time, account id), in arrival order
        self._lock = threading.Lock()

    async def answer(self, request: Request) -> Response:
        with self._lock:
            self.asked.append((time.monotonic(), request.path_params["vid"]))
        return JSONResponse({"error_code": "DATA_NOT_FOUND"}, status_code=404)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v2/accounts/{vid}", self.answer, methods=["GET"])])


@pytest.fixture
def status_api() -> Iterator[tuple[StatusApi, str]]:
    api = StatusApi()
    with serving_app(api.app()) as url:
        yield api, url


def _expect_all(kafka: KafkaSettings, topic: str, codec: Codec, vids: list[str]) -> None:
    """Expectations an hour old with a 10-minute window: all due now, each polled once in the test."""
    producer = Producer(config.producer(kafka))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    for vid in vids:
        e = Expectation("xendit", "xendit", vid, an_hour_ago, window_s=600)
        producer.produce(topic, key=e.key.encode(), value=codec.encode("Expectation", expectation_to_record(e), topic))
    assert producer.flush(30) == 0


def _notice(kafka: KafkaSettings, topic: str, codec: Codec, vid: str) -> None:
    """Incode's ONBOARDING_FINISHED, as the processor writes it to the events topic."""
    now = datetime.now(UTC)
    event = VerificationEvent(
        str(uuid.uuid4()),
        f"incode:{vid}:ONBOARDING_FINISHED",
        "incode",
        "incode",
        vid,
        VerificationStatus.PENDING,
        "ONBOARDING_FINISHED",
        now,
        now,
        None,
    )
    producer = Producer(config.producer(kafka))
    producer.produce(topic, key=event.key.encode(), value=codec.encode("VerificationEvent", event_to_record(event)))
    assert producer.flush(30) == 0


def _poll_times(kafka: KafkaSettings, topic: str, codec: Codec) -> dict[str, Expectation | None]:
    """The expected table as a reader of it sees it now: the latest expectation per key."""
    latest: dict[str, Expectation | None] = {}
    for r in reader.read_all(kafka, topic):
        key = (r.key or b"").decode()
        latest[key] = expectation_from_record(codec.decode("Expectation", r.value)) if r.value else None
    return latest


def _most_in_a_second(times: list[float]) -> int:
    return max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def _revoked(reconciler: Reconciler, group: str) -> float:
    value = reconciler.metrics.registry.get_sample_value(
        "kycstream_reconcile_partitions_revoked_total", {"group": group}
    )
    return value or 0.0


def _fetched(reconciler: Reconciler) -> float:
    value = reconciler.metrics.registry.get_sample_value(
        "kycstream_fetches_total", {"provider": "incode", "outcome": "result"}
    )
    return value or 0.0


def _polls_while_fetching(
    kafka: KafkaSettings,
    names: TopicSettings,
    codec: Codec,
    status_api: tuple[StatusApi, str],
    incode_api: tuple[IncodeStandIn, str],
    count: int,
    rate_per_s: float,
    max_polls_per_tick: int,
) -> None:
    api, api_url = status_api
    standin, incode_url = incode_api
    vids = [unique("acct") for _ in range(count)]
    _expect_all(kafka, names.expected, codec, vids)
    sources = {
        "xendit": {"provider": "xendit", "poll": {"base_url": api_url, "token": "t", "rate_per_s": rate_per_s}},
        "incode": {
            "provider": "incode",
            "poll": {"base_url": incode_url, "token": DEV_API_KEY, "admin_token": DEV_ADMIN_TOKEN},
        },
    }
    group = unique("rec")
    # session.timeout.ms 6 s is the embedded broker's least; the poll interval may not be shorter.
    section = {"max_poll_interval_ms": 10_000, "session_timeout_ms": 6000, "max_polls_per_tick": max_polls_per_tick}
    with reconciling(kafka, names, sources, group, **section) as reconciler:
        wait_until(lambda: api.asked, 60, "a first poll")
        notice = unique("ok")
        _notice(kafka, names.events, codec, notice)
        sent = time.monotonic()
        wait_until(lambda: _fetched(reconciler) == 1, 10, "the notice's score fetched and written")
        fetched_in = time.monotonic() - sent
        polled_by_then = len(api.asked)
        wait_until(
            lambda: len(api.asked) >= count, 3 * count / rate_per_s + 30, lambda: f"{count} polls ({len(api.asked)})"
        )
        wait_until(
            lambda: all(e and e.polls == 1 for e in _poll_times(kafka, names.expected, codec).values()),
            30,
            "every expectation's poll time written back",
        )
        wait_until(lambda: committed_to_end(kafka, f"{group}-fetch", names.events), 30, "the fetch group committed")
        assert (_revoked(reconciler, "expected"), _revoked(reconciler, "fetch")) == (0, 0), "left a group"
        assert reconciler.ticks >= math.ceil(count / max_polls_per_tick)

    assert standin.calls[notice] == 1
    assert fetched_in < 5, f"the fetch waited {fetched_in:.1f} s"
    assert polled_by_then < count, f"fetched {fetched_in:.1f} s after the notice: after all {count} polls"
    assert Counter(vid for _, vid in api.asked) == dict.fromkeys(vids, 1), "each polled once in its window"
    times = [t for t, _ in api.asked]
    burst = max(1, int(rate_per_s))  # the token bucket's capacity
    assert _most_in_a_second(times) <= burst + rate_per_s + 1, "never faster than the source's rate"
    took = times[-1] - times[0]
    assert took >= (count - burst) / rate_per_s - 1, f"{count} polls in {took:.1f} s: faster than the rate"
    assert took <= 2 * count / rate_per_s + 5, f"{count} polls in {took:.1f} s: well under the rate"

    # A restart reads the poll times back: nothing is due again before its window (10 minutes).
    with reconciling(kafka, names, sources, group, **section) as restarted:
        wait_until(lambda: restarted.ticks >= 2, 60, "the restarted reconciler ticked on whole tables")
    assert len(api.asked) == count, "polled again after the restart"


def test_a_reconciler_polls_in_bounded_ticks_fetches_meanwhile_and_keeps_poll_times(
    make_topics: Callable[..., TopicSettings],
    kafka: KafkaSettings,
    codec: Codec,
    status_api: tuple[StatusApi, str],
    incode_api: tuple[IncodeStandIn, str],
) -> None:
    _polls_while_fetching(kafka, make_topics(), codec, status_api, incode_api, 60, 10.0, 20)


@pytest.mark.slow
def test_a_thousand_due_expectations_are_polled_at_the_rate_without_leaving_the_groups(
    make_topics: Callable[..., TopicSettings],
    kafka: KafkaSettings,
    codec: Codec,
    status_api: tuple[StatusApi, str],
    incode_api: tuple[IncodeStandIn, str],
) -> None:
    """Polling them all takes about 17 s against a 10 s max.poll.interval.ms: one tick doing it all
    would leave both groups."""
    _polls_while_fetching(kafka, make_topics(), codec, status_api, incode_api, 1000, 60.0, 200)
