"""Every provider's golden cases, over HTTP with its real credential or signature, through the CLI."""

from __future__ import annotations

import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from processors.model import RawDelivery, VerificationEvent
from processors.pipeline import normalize
from processors.providers import REGISTRY
from tests import cases
from tests.conftest import committed_to_end, wait_until
from tests.e2e.pipeline import Pipeline, kycstream_command
from tests.e2e.workload import sign

DECISIONS = {"APPROVED", "REJECTED", "RESUBMISSION_REQUIRED"}


def _idempotency_key(case: cases.Case) -> str:
    outcome = normalize(
        RawDelivery("r", case.provider, case.provider, "POST", datetime.now(UTC), case.body, case.headers)
    )
    assert isinstance(outcome, VerificationEvent), case.id
    return outcome.idempotency_key


def expected_status(events: list[dict[str, Any]]) -> str:
    """PRODUCT.md's rule, applied to a verification's events: in progress < REVIEW < EXPIRED < a
    decision, and a higher rank is never replaced by a lower; within a rank the later provider
    timestamp (else receipt time) wins, then the greater event id."""

    def rank(e: dict[str, Any]) -> tuple[int, datetime, str]:
        tier = 3 if e["status"] in DECISIONS else {"EXPIRED": 2, "REVIEW": 1}.get(e["status"], 0)
        return (tier, e["occurred_at"] or e["received_at"], e["event_id"])

    return str(max(events, key=rank)["status"])


def test_every_provider_fixture_over_http(pipeline: Pipeline) -> None:
    sent: dict[str, cases.Case] = {}
    all_cases = cases.load()
    assert {c.provider for c in all_cases} == set(REGISTRY), "every installed provider has golden cases"
    with httpx.Client(base_url=pipeline.url, timeout=15) as client:
        for case in all_cases:
            headers = {**case.headers, "content-type": "application/json", **sign(case.provider, case.body)}
            response = client.post(f"/webhooks/{case.provider}", content=case.body, headers=headers)
            assert response.status_code == 200, (case.id, response.text)
            body = response.json()
            assert body["status"] == "accepted" and response.headers["x-request-id"] == body["request_id"]
            sent[body["request_id"]] = case

        # Refused requests never reach Kafka.
        body = b'{"event": "account.verification", "data": {"id": "refused"}}'
        refusals = {
            "no credential": client.post("/webhooks/xendit", content=body),
            "wrong token": client.post("/webhooks/xendit", content=body, headers={"x-callback-token": "nope"}),
            "bad signature": client.post("/webhooks/metamap", content=body, headers={"x-signature": "00" * 32}),
            "signature of another body": client.post(
                "/webhooks/metamap", content=body + b" ", headers=sign("metamap", body)
            ),
            "unknown source": client.post("/webhooks/acme", content=body, headers=sign("xendit", body)),
            "method": client.put("/webhooks/xendit", content=body, headers=sign("xendit", body)),
            "too large": client.post(
                "/webhooks/esign", content=b"{" + b" " * (1024 * 1024) + b"}", headers=sign("esign", body)
            ),
        }
    statuses = {what: r.status_code for what, r in refusals.items()}
    assert statuses == {
        "no credential": 401,
        "wrong token": 401,
        "bad signature": 401,
        "signature of another body": 401,
        "unknown source": 404,
        "method": 405,
        "too large": 413,
    }

    keys = {rid: _idempotency_key(c) for rid, c in sent.items() if c.event}
    dead = {rid: c for rid, c in sent.items() if c.dead_letter}
    wait_until(
        lambda: {e["idempotency_key"] for e in pipeline.decoded("events")} >= set(keys.values()),
        60,
        f"an event for each of the {len(set(keys.values()))} results",
        every=0.5,
    )
    wait_until(lambda: len(pipeline.decoded("dlq")) >= len(dead), 60, f"{len(dead)} dead letters", every=0.5)
    wait_until(  # then whatever the processor writes for the raw records is in: nothing more arrives
        lambda: committed_to_end(pipeline.kafka, pipeline.group, pipeline.topics.raw),
        60,
        "the processor committed the raw topic",
        every=0.5,
    )
    letters = pipeline.decoded("dlq")

    raw = pipeline.decoded("raw")
    assert sorted(r["request_id"] for r in raw) == sorted(sent), "exactly the accepted deliveries, nothing refused"
    for record in raw:
        case = sent[record["request_id"]]
        assert record["body"] == case.body and record["provider"] == record["source"] == case.provider
        assert "authorization" not in record["headers"] and "x-callback-token" not in record["headers"]

    events = pipeline.decoded("events")
    assert Counter(e["event_id"] for e in events).most_common(1)[0][1] == 1, "an event written twice"
    assert sorted(e["idempotency_key"] for e in events) == sorted(set(keys.values())), "one event per result"
    notices = Counter((c.provider, c.notice) for c in sent.values() if c.notice)
    assert notices and pipeline.processor_metric("kycstream_notices_total") == sum(notices.values())
    for event in events:
        case = sent[event["raw_ref"]["request_id"]]
        assert case.event, f"{case.id} is a notice or a dead letter, not an event"
        cases.assert_matches(event, case.expect)
        assert event["_key"] == f"{event['provider']}:{event['verification_id']}".encode()

    assert len(letters) == len(dead)
    for letter in letters:
        case = dead[letter["request_id"]]
        assert letter["reason"] == case.dead_letter, case.id
        assert pipeline.codec.decode("RawDelivery", letter["original_value"])["body"] == case.body

    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_key[f"{event['provider']}:{event['verification_id']}"].append(event)
    states = pipeline.latest_states()  # final: the raw topic is committed, so its states are in
    assert set(states) == set(by_key)
    for key, group in by_key.items():
        assert states[key]["status"] == expected_status(group), (key, [(e["status"], e["occurred_at"]) for e in group])
        assert states[key]["event_count"] == len(group), key

    # What a user sees with `kycstream tail`: the same states, as JSON lines.
    tail = subprocess.run(
        [
            *kycstream_command(),
            "tail",
            "--topic",
            "state",
            "--from-beginning",
            "--count",
            str(len(pipeline.records("state"))),
            "--config",
            str(pipeline.config_path),
        ],
        env=pipeline.env,
        capture_output=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr.decode()
    tailed: dict[str, str] = {}
    for line in tail.stdout.splitlines():
        record = orjson.loads(line)
        tailed[record["key"]] = record["status"]
    assert tailed == {k: s["status"] for k, s in states.items()}
