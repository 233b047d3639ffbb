"""Results fetched when a callback is only a notice: Incode's ONBOARDING_FINISHED -> Fetch Scores,
through the real gateway, broker, processor and reconciler, against the local Incode stand-in."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from contextlib import AbstractContextManager
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.reconcile.reconciler import Reconciler
from processors.reconcile.standin import DEV_ADMIN_TOKEN, DEV_API_KEY, IncodeStandIn
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import (
    committed_to_end,
    latest_states,
    post,
    processing,
    processor_env,
    read,
    reconciling,
    serving_app,
    unique,
    wait_until,
)

pytestmark = pytest.mark.broker


def fetching(
    kafka: KafkaSettings, topics: TopicSettings, api_url: str, group: str | None = None, **poll: Any
) -> AbstractContextManager[Reconciler]:
    """A reconciler whose incode source has the stand-in's credentials: it fetches scores."""
    credentials = {"base_url": api_url, "token": DEV_API_KEY, "admin_token": DEV_ADMIN_TOKEN}
    return reconciling(kafka, topics, {"incode": {"provider": "incode", "poll": {**credentials, **poll}}}, group)


def _notify(url: str, vid: str, status: str = "ONBOARDING_FINISHED") -> None:
    body = json.dumps({"interviewId": vid, "onboardingStatus": status}).encode()
    response = post(f"{url}/webhooks/incode", body, {"x-incode-webhook-secret": "dev-secret"})
    assert response.status_code == 200, response.text


def _fetches(reconciler: Reconciler, outcome: str) -> float:
    value = reconciler.metrics.registry.get_sample_value(
        "kycstream_fetches_total", {"provider": "incode", "outcome": outcome}
    )
    return value or 0.0


def _settled(kafka: KafkaSettings, topics: TopicSettings, fetch_group: str, processor_group: str) -> bool:
    """The fetcher finished every notice and the processor normalized everything it wrote."""
    return committed_to_end(kafka, fetch_group, topics.events) and committed_to_end(kafka, processor_group, topics.raw)


def _decisions(kafka: KafkaSettings, topics: TopicSettings, codec: Codec) -> Counter[tuple[str, str]]:
    events = read(kafka, topics.events, codec, "VerificationEvent")
    return Counter((e["verification_id"], e["status"]) for e in events if e["event_type"] == "score")


def test_each_score_word_decides_once_however_often_the_notice_comes(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    url, settings = gateway
    standin, api_url = incode_api
    ids = {unique("ok"): "APPROVED", unique("fail"): "REJECTED", unique("warn"): "REVIEW"}
    for vid in ids:
        for _ in range(3):  # the provider retries the notice: one event, one fetch
            _notify(url, vid)
    group, rec_group = unique("proc"), unique("rec")
    with (
        processing(kafka, settings.topics, group_id=group),
        fetching(kafka, settings.topics, api_url, rec_group) as rec,
    ):
        wait_until(
            lambda: (
                {s["status"] for k, s in latest_states(kafka, settings.topics.state, codec).items()}
                >= set(ids.values())
            ),
            60,
            "every verification decided by its score",
        )
        wait_until(lambda: _settled(kafka, settings.topics, f"{rec_group}-fetch", group), 60, "everything committed")
        assert _fetches(rec, "result") == 3  # counted before the commit
    states = latest_states(kafka, settings.topics.state, codec)
    assert {vid: states[f"incode:{vid}"]["status"] for vid in ids} == ids
    assert _decisions(kafka, settings.topics, codec) == Counter({(vid, status): 1 for vid, status in ids.items()})
    assert {vid: standin.calls[vid] for vid in ids} == dict.fromkeys(ids, 1), "no second fetch"
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery")
    assert Counter(r["origin"] for r in raw) == Counter(callback=9, fetch=3)
    assert read(kafka, settings.topics.dlq, codec, "DeadLetter") == []


def test_a_score_not_ready_is_fetched_again_with_backoff(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    url, settings = gateway
    standin, api_url = incode_api
    vid = unique("late")  # the stand-in answers UNKNOWN twice, then OK
    not_found = unique("nf")
    standin.scripts[not_found] = [(404, {"status": 404, "error": "Not Found"}), (200, {"overall": {"status": "FAIL"}})]
    _notify(url, vid)
    _notify(url, not_found)
    with processing(kafka, settings.topics), fetching(kafka, settings.topics, api_url, fetch_backoff_s=0.2) as rec:
        wait_until(
            lambda: (
                {k: s["status"] for k, s in latest_states(kafka, settings.topics.state, codec).items()}
                == {f"incode:{vid}": "APPROVED", f"incode:{not_found}": "REJECTED"}
            ),
            60,
            "both decided once their score was ready",
        )
        wait_until(lambda: _fetches(rec, "result") == 2, 30, "both results' writes acknowledged")
        assert _fetches(rec, "not_ready") == 3  # two UNKNOWN, one 404
    assert (standin.calls[vid], standin.calls[not_found]) == (3, 2)
    assert read(kafka, settings.topics.dlq, codec, "DeadLetter") == [], "not ready is retried, not dead-lettered"


def test_a_restarted_or_second_reconciler_decides_each_verification_once(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    """The first reconciler stops with fetches unfinished (scores not ready); two others in the same
    group take over: every notice is fetched to its end, each verification decided once."""
    url, settings = gateway
    standin, api_url = incode_api
    ids = [unique("slow") for _ in range(6)]
    for vid in ids:
        standin.scripts[vid] = [(200, {"overall": {"status": "UNKNOWN"}})] * 2 + [(200, {"overall": {"status": "OK"}})]
        _notify(url, vid)
    group, rec_group = unique("proc"), unique("rec")
    with processing(kafka, settings.topics, group_id=group):
        with fetching(kafka, settings.topics, api_url, rec_group, fetch_backoff_s=30) as first:
            wait_until(lambda: _fetches(first, "not_ready") >= len(ids), 60, "a first, unready fetch of each")
        assert all(standin.calls[vid] == 1 for vid in ids)
        with (
            fetching(kafka, settings.topics, api_url, rec_group, fetch_backoff_s=0.2),
            fetching(kafka, settings.topics, api_url, rec_group, fetch_backoff_s=0.2),
        ):
            wait_until(
                lambda: _decisions(kafka, settings.topics, codec) == Counter({(vid, "APPROVED"): 1 for vid in ids}),
                90,
                "each verification decided",
            )
            wait_until(lambda: _settled(kafka, settings.topics, f"{rec_group}-fetch", group), 60, "all committed")
    assert _decisions(kafka, settings.topics, codec) == Counter({(vid, "APPROVED"): 1 for vid in ids})
    states = latest_states(kafka, settings.topics.state, codec)
    assert {states[f"incode:{vid}"]["status"] for vid in ids} == {"APPROVED"}


def test_a_processor_killed_between_notice_and_fetch_loses_nothing(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    url, settings = gateway
    _, api_url = incode_api
    vid = unique("kill")
    _notify(url, vid)
    group = unique("proc")
    command = [sys.executable, "-m", "processors.cli", "process", "--group", group]
    victim = subprocess.Popen(command, env=processor_env(kafka, settings.topics), stderr=subprocess.DEVNULL)
    try:
        read(kafka, settings.topics.events, codec, "VerificationEvent", at_least=1, timeout=60)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    with processing(kafka, settings.topics, group_id=group), fetching(kafka, settings.topics, api_url):
        wait_until(
            lambda: (
                latest_states(kafka, settings.topics.state, codec).get(f"incode:{vid}", {}).get("status") == "APPROVED"
            ),
            60,
            "the score fetched after the restart decided",
        )
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "the raw topic committed")
    assert _decisions(kafka, settings.topics, codec) == Counter({(vid, "APPROVED"): 1})


def test_a_late_manual_review_follows_the_state_rules_after_a_fetched_decision(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec, incode_api: tuple[IncodeStandIn, str]
) -> None:
    url, settings = gateway
    _, api_url = incode_api
    approved, overturned = unique("ok"), unique("ok")
    _notify(url, approved)
    _notify(url, overturned)
    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group), fetching(kafka, settings.topics, api_url):
        key = f"incode:{overturned}"
        wait_until(
            lambda: latest_states(kafka, settings.topics.state, codec).get(key, {}).get("status") == "APPROVED",
            60,
            "the fetched score decided",
        )
        _notify(url, approved, "ID_VALIDATION_FINISHED")  # a late progress status: never a regression
        _notify(url, overturned, "MANUAL_REVIEW_REJECTED")  # a later decision by a person: it wins
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "the late callbacks processed")
    states = latest_states(kafka, settings.topics.state, codec)
    assert states[f"incode:{approved}"]["status"] == "APPROVED"
    assert states[f"incode:{overturned}"]["status"] == "REJECTED"


def test_a_refused_credential_dead_letters_the_notice_with_what_to_fix(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = gateway
    standin = IncodeStandIn(admin_token="another-token")
    vid = unique("refused")
    _notify(url, vid)
    with (
        serving_app(standin.app()) as api_url,
        processing(kafka, settings.topics),
        fetching(kafka, settings.topics, api_url) as rec,
    ):
        wait_until(lambda: _fetches(rec, "fetch_unauthorized") == 1, 60, "the refusal dead-lettered")
    letters = read(kafka, settings.topics.dlq, codec, "DeadLetter")
    assert [(d["reason"], d["source_topic"]) for d in letters] == [("fetch_unauthorized", settings.topics.events)]
    assert "credential" in letters[0]["detail"]
    assert standin.calls[vid] == 1


def test_scores_are_fetched_with_an_executive_token_logged_in_for(
    gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    """The dev config's way: `poll.executive_login` against the stand-in's executive login."""
    url, settings = gateway
    login = ("ops@example.com", "dashboard-pass")
    standin = IncodeStandIn(admin_token=None, login=login)
    ids = {unique("ok"): "APPROVED", unique("fail"): "REJECTED"}
    for vid in ids:
        _notify(url, vid)
    executive_login = {"email": login[0], "password": login[1]}
    with (
        serving_app(standin.app()) as api_url,
        processing(kafka, settings.topics),
        fetching(kafka, settings.topics, api_url, admin_token=None, executive_login=executive_login) as rec,
    ):
        wait_until(lambda: _fetches(rec, "result") == len(ids), 60, "both scores fetched")
        wait_until(
            lambda: all(
                latest_states(kafka, settings.topics.state, codec).get(f"incode:{vid}", {}).get("status") == status
                for vid, status in ids.items()
            ),
            60,
            "both verifications decided by their score",
        )
    assert standin.logins == 1, "one login for both fetches"
    assert {vid: standin.calls[vid] for vid in ids} == dict.fromkeys(ids, 1)
    assert read(kafka, settings.topics.dlq, codec, "DeadLetter") == []
