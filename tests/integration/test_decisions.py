"""The right decision, always: a reversal is a new event, repeats are not, and a result fetched late
never overrides a decision that came after its notice. Through the real gateway, broker, processor
and (for the fetch) reconciler, against the local Incode stand-in."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.reconcile.standin import DEV_ADMIN_TOKEN, DEV_API_KEY, IncodeStandIn
from processors.settings import KafkaSettings
from tests.conftest import (
    committed_to_end,
    latest_states,
    post,
    processing,
    read,
    reconciling,
    unique,
    wait_until,
)
from tests.credentials import auth_headers

pytestmark = pytest.mark.broker

TIMES = ("2026-05-08T10:30:00.000Z", "2026-05-08T11:45:00.000Z", "2026-05-08T12:10:00.000Z")


def _metamap(vid: str, word: str, moment: str) -> dict[str, Any]:
    return {
        "eventName": "verification_updated",
        "resource": f"https://api.getmati.com/v2/verifications/{vid}",
        "identityStatus": word,
        "timestamp": moment,
    }


def _incode(vid: str, word: str, moment: str) -> dict[str, Any]:
    return {"interviewId": vid, "onboardingStatus": word, "timestamp": moment}


# provider -> (verification id maker, body maker, the three words: decision, reversal, reversal back)
REVERSALS: dict[str, tuple[Callable[[], str], Callable[[str, str, str], dict[str, Any]], tuple[str, ...]]] = {
    "metamap": (lambda: uuid.uuid4().hex[:24], _metamap, ("verified", "rejected", "verified")),
    "incode": (
        lambda: unique("mr"),
        _incode,
        ("MANUAL_REVIEW_APPROVED", "MANUAL_REVIEW_REJECTED", "MANUAL_REVIEW_APPROVED"),
    ),
}


def _sender(url: str, settings: GatewaySettings, provider: str) -> Callable[[dict[str, Any]], None]:
    def send(doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        response = post(f"{url}/webhooks/{provider}", body, auth_headers(settings.sources[provider], body))
        assert response.status_code == 200, response.text

    return send


def _outcome(kafka: KafkaSettings, settings: GatewaySettings, codec: Codec, group: str, keys: list[str]) -> Any:
    wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "every delivery processed")
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    states = latest_states(kafka, settings.topics.state, codec)
    per_key = {key: [e for e in events if f"{e['provider']}:{e['verification_id']}" == key] for key in keys}
    return per_key, {key: states[key]["status"] for key in keys}


@pytest.mark.parametrize("provider", sorted(REVERSALS))
def test_a_reversal_within_the_dedup_window_is_a_new_event_and_repeats_are_not(
    provider: str, gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    make_id, body, words = REVERSALS[provider]
    vid = make_id()
    key = f"{provider}:{vid}"
    bodies = [body(vid, word, moment) for word, moment in zip(words, TIMES, strict=True)]
    send, group = _sender(url, settings, provider), unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        for doc in bodies:  # a decision, a reviewer's reversal, and the reversal reversed
            send(doc)
        events, states = _outcome(kafka, settings, codec, group, [key])
        assert [e["status"] for e in events[key]] == ["APPROVED", "REJECTED", "APPROVED"]
        assert len({e["event_id"] for e in events[key]}) == 3, "a reversal has its own event id"
        assert states[key] == "APPROVED"

        again = bodies * 2  # the provider retries each of them twice, in any order
        random.Random(vid).shuffle(again)
        for doc in again:
            send(doc)
        events, states = _outcome(kafka, settings, codec, group, [key])
    assert len(events[key]) == 3, "repeats of results already reflected make no event"
    assert states[key] == "APPROVED"


def test_the_last_result_by_provider_time_decides_whatever_order_they_arrive_in(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    """Every order of verified, rejected, verified (each sent twice): the final state is the one the
    provider gave last (verified), never the rejection it reversed; never more than three events."""
    url, settings = gateway
    send, group = _sender(url, settings, "metamap"), unique("proc")
    words = ("verified", "rejected", "verified")
    orders = list(itertools.permutations(range(3)))
    vids = [uuid.uuid4().hex[:24] for _ in orders]
    for vid, order in zip(vids, orders, strict=True):
        bodies = [_metamap(vid, words[i], TIMES[i]) for i in order]
        for doc in bodies + bodies:
            send(doc)
    keys = [f"metamap:{vid}" for vid in vids]
    with processing(kafka, settings.topics, group_id=group):
        events, states = _outcome(kafka, settings, codec, group, keys)
    assert states == dict.fromkeys(keys, "APPROVED")
    # The second "verified" is an event only when it comes last (a reversal of the rejection);
    # before the rejection it is already reflected (same status, or older than the state).
    assert {key: len(found) for key, found in events.items()} == {
        key: 3 if order[-1] == 2 else 2 for key, order in zip(keys, orders, strict=True)
    }


def test_a_score_fetched_after_a_manual_review_does_not_override_it(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    """ONBOARDING_FINISHED, the score not ready twice, a reviewer's MANUAL_REVIEW_REJECTED meanwhile,
    then the automatic score OK: the score is as old as its notice, so the reviewer's word stands."""
    url, settings = gateway
    standin, api_url = incode_api
    vid = unique("late")  # the stand-in answers not ready twice, then OK
    send = _sender(url, settings, "incode")
    poll = {"base_url": api_url, "token": DEV_API_KEY, "admin_token": DEV_ADMIN_TOKEN, "fetch_backoff_s": 0.5}
    sources = {"incode": {"provider": "incode", "poll": poll}}
    group, rec_group = unique("proc"), unique("rec")
    with processing(kafka, settings.topics, group_id=group), reconciling(kafka, settings.topics, sources, rec_group):
        send({"interviewId": vid, "onboardingStatus": "ONBOARDING_FINISHED"})
        wait_until(lambda: standin.calls[vid] >= 1, 60, "a first fetch of the score (not ready)")
        send({"interviewId": vid, "onboardingStatus": "MANUAL_REVIEW_REJECTED"})
        wait_until(lambda: standin.calls[vid] >= 3, 60, "the third fetch, whose score is ready")
        wait_until(
            lambda: (
                committed_to_end(kafka, f"{rec_group}-fetch", settings.topics.events)
                and committed_to_end(kafka, group, settings.topics.raw)
            ),
            60,
            "the fetched score written and processed",
        )
    events = read(kafka, settings.topics.events, codec, "VerificationEvent")
    assert sorted(e["provider_status"] for e in events if e["verification_id"] == vid) == [
        "MANUAL_REVIEW_REJECTED",
        "ONBOARDING_FINISHED",
        "SCORE_OK",
    ]
    assert latest_states(kafka, settings.topics.state, codec)[f"incode:{vid}"]["status"] == "REJECTED"
