"""Onfido through the real gateway (X-SHA2-Signature), broker, processor and reconciler: a signed
Studio result becomes its event, a tampered delivery is refused before Kafka, and a classic
check.completed is decided by the check fetched from a local stand-in of Onfido's checks API."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.settings import GatewaySettings
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings
from tests.cases import CASES_DIR
from tests.conftest import (
    DEV_SECRET,
    committed_to_end,
    dev_sources,
    latest_states,
    post,
    processing,
    read,
    reconciling,
    serving,
    serving_app,
    unique,
    wait_until,
)
from tests.onfido_api import DEV_API_TOKEN, OnfidoStandIn

pytestmark = pytest.mark.broker

# The official onfido-python SDK's classic check.completed test event, its token and signature.
_SDK = json.loads((CASES_DIR / "onfido" / "signatures.json").read_text())[0]
SDK_BODY, SDK_TOKEN = _SDK["body_text"].encode(), _SDK["secret"]
SDK_SIGNATURE = _SDK["headers"]["X-SHA2-Signature"]
SDK_CHECK = "f2302f45-227d-413d-ad61-09ec077a086a"


def _signed(body: bytes, secret: str = DEV_SECRET) -> dict[str, str]:
    return {"X-SHA2-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def _run_completed(run_id: str, status: str) -> bytes:
    return json.dumps(
        {
            "payload": {
                "resource_type": "workflow_run",
                "action": "workflow_run.completed",
                "object": {"id": run_id, "status": status, "completed_at_iso8601": "2026-01-01T10:00:00Z"},
                "resource": {"id": run_id, "status": status, "input": {"first_name": "Jane"}},
            }
        }
    ).encode()


def _check_completed(check_id: str) -> bytes:
    return json.dumps(
        {
            "payload": {
                "resource_type": "check",
                "action": "check.completed",
                "object": {"id": check_id, "status": "complete", "completed_at_iso8601": "2026-01-01T10:05:00Z"},
            }
        }
    ).encode()


@pytest.fixture
def onfido_gateway(gateway_settings: Callable[..., GatewaySettings]) -> Iterator[tuple[str, GatewaySettings]]:
    """A gateway whose onfido source accepts two webhook tokens (Onfido: one per registered webhook)."""
    settings = gateway_settings(dev_sources(onfido={"auth": {"credentials": [DEV_SECRET, SDK_TOKEN]}}))
    with serving(settings) as url:
        yield url, settings


def test_a_signed_webhook_becomes_its_event_and_a_tampered_one_never_reaches_kafka(
    onfido_gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = onfido_gateway
    run = unique("run")
    approved = _run_completed(run, "approved")
    refused = [
        post(f"{url}/webhooks/onfido", approved.replace(b"approved", b"APPROVED"), _signed(approved)),
        post(f"{url}/webhooks/onfido", SDK_BODY, {"X-SHA2-Signature": SDK_SIGNATURE[:-1] + "8"}),  # the SDK's own
        post(f"{url}/webhooks/onfido", approved, _signed(approved, "not-the-token")),
        post(f"{url}/webhooks/onfido", approved, {"X-SHA2-Signature": "not hex"}),
        post(f"{url}/webhooks/onfido", approved),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused), [r.text for r in refused]
    assert read(kafka, settings.topics.raw, codec, "RawDelivery") == [], "a refused delivery never reaches Kafka"

    accepted = [
        post(f"{url}/webhooks/onfido", approved, _signed(approved)),
        post(f"{url}/webhooks/onfido", SDK_BODY, {"X-SHA2-Signature": SDK_SIGNATURE}),  # the second token
    ]
    assert [r.status_code for r in accepted] == [200, 200], [r.text for r in accepted]
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery")
    assert sorted(r["request_id"] for r in raw) == sorted(r.json()["request_id"] for r in accepted)
    assert {r["_key"] for r in raw} == {f"onfido:{run}".encode(), f"onfido:{SDK_CHECK}".encode()}

    group = unique("proc")
    with processing(kafka, settings.topics, group_id=group):
        wait_until(lambda: committed_to_end(kafka, group, settings.topics.raw), 60, "both deliveries processed")
    events = {e["verification_id"]: e for e in read(kafka, settings.topics.events, codec, "VerificationEvent")}
    assert events[run]["status"] == "APPROVED"
    assert events[run]["idempotency_key"] == f"onfido:{run}:workflow_run:approved"
    assert "Jane" not in json.dumps(events[run], default=str)
    assert (events[SDK_CHECK]["status"], events[SDK_CHECK]["provider_status"]) == (
        "PENDING",
        "check.completed/complete",
    )
    states = latest_states(kafka, settings.topics.state, codec)
    assert states[f"onfido:{run}"]["status"] == "APPROVED"


def test_a_classic_check_is_decided_by_the_check_fetched_after_check_completed(
    onfido_gateway: tuple[str, GatewaySettings], kafka: KafkaSettings, codec: Codec
) -> None:
    url, settings = onfido_gateway
    standin = OnfidoStandIn()
    ids = {unique("clear"): "APPROVED", unique("consider"): "REVIEW", unique("late"): "APPROVED"}
    for check_id in ids:
        for _ in range(2):  # Onfido resends until it gets a 2xx: one event, one fetch
            body = _check_completed(check_id)
            assert post(f"{url}/webhooks/onfido", body, _signed(body)).status_code == 200
    group, rec_group = unique("proc"), unique("rec")
    poll: dict[str, Any] = {"token": DEV_API_TOKEN, "fetch_backoff_s": 0.2}
    with serving_app(standin.app()) as api_url, processing(kafka, settings.topics, group_id=group):
        sources = {"onfido": {"provider": "onfido", "poll": {"base_url": api_url, **poll}}}
        with reconciling(kafka, settings.topics, sources, rec_group):
            wait_until(
                lambda: (
                    {
                        vid: latest_states(kafka, settings.topics.state, codec).get(f"onfido:{vid}", {}).get("status")
                        for vid in ids
                    }
                    == ids
                ),
                60,
                "every check decided by its fetched result",
            )
            wait_until(
                lambda: (
                    committed_to_end(kafka, f"{rec_group}-fetch", settings.topics.events)
                    and committed_to_end(kafka, group, settings.topics.raw)
                ),
                60,
                "every fetch written and processed",
            )
    decisions = [
        e for e in read(kafka, settings.topics.events, codec, "VerificationEvent") if e["event_type"] == "check"
    ]
    assert Counter((e["verification_id"], e["status"]) for e in decisions) == Counter(ids.items())
    # Onfido's check has no completion time: the result is dated by its check.completed notice.
    assert {e["occurred_at"].isoformat() for e in decisions} == {"2026-01-01T10:05:00+00:00"}
    assert {vid: standin.calls[vid] for vid in ids} == {vid: 3 if "late" in vid else 1 for vid in ids}
    raw = read(kafka, settings.topics.raw, codec, "RawDelivery")
    assert Counter(r["origin"] for r in raw) == Counter(callback=6, fetch=3)
    assert read(kafka, settings.topics.dlq, codec, "DeadLetter") == []
