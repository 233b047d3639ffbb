"""Upgrading over existing topics: records written by the previous version stay readable."""

from __future__ import annotations

import io
import signal
from datetime import UTC, datetime

import fastavro
import fastavro.schema
import httpx
import orjson
from confluent_kafka import Producer

from processors.kafka import config
from tests.conftest import wait_until
from tests.e2e.pipeline import Pipeline
from tests.e2e.workload import sign

# VerificationState as written before raw_offset was added (e2234ec and earlier), with its enum.
PREVIOUS_STATE = {
    "type": "record",
    "name": "VerificationState",
    "namespace": "kycstream",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "provider", "type": "string"},
        {"name": "verification_id", "type": "string"},
        {
            "name": "status",
            "type": {
                "type": "enum",
                "name": "VerificationStatus",
                "namespace": "kycstream",
                "symbols": ["PENDING", "APPROVED", "REJECTED", "RESUBMISSION_REQUIRED", "REVIEW", "ERROR"],
            },
        },
        {"name": "last_event_id", "type": "string"},
        {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "occurred_at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "decided_at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "event_count", "type": "int", "default": 1},
    ],
}
PREVIOUS_FINGERPRINT = "2a2120bc472a5453"  # what that version wrote (seen in the error of the bug)


def _previous_state_record(key: str, count: int) -> bytes:
    parsed = fastavro.parse_schema(PREVIOUS_STATE)
    fingerprint = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    assert fingerprint == PREVIOUS_FINGERPRINT
    provider, vid = key.split(":", 1)
    out = io.BytesIO()
    out.write(b"\xc3\x01" + bytes.fromhex(fingerprint))  # single-object encoding, as serde.Codec writes
    when = datetime(2026, 5, 8, 10, 0, tzinfo=UTC)
    record = {
        "key": key,
        "provider": provider,
        "verification_id": vid,
        "status": "PENDING",
        "last_event_id": "00000000-0000-5000-8000-000000000000",
        "updated_at": when,
        "occurred_at": when,
        "decided_at": None,
        "event_count": count,
    }
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def test_an_upgraded_processor_restores_a_state_table_written_with_the_previous_schema(
    make_pipeline: object,
) -> None:
    """Found by this test: 0502bd1 added raw_offset without keeping the previous schema in
    schemas/history/, and the upgraded processor exited at start (fixed in 4c683a1)."""
    pipeline: Pipeline = make_pipeline()  # type: ignore[operator]
    pipeline.create_topics()
    pipeline.start_gateway()
    key = "xendit:upgraded-1"
    producer = Producer(config.producer(pipeline.kafka))
    previous = _previous_state_record(key, 3)
    for partition in range(pipeline.topics.partitions):  # wherever the key's partition is
        producer.produce(pipeline.topics.state, key=key.encode(), value=previous, partition=partition)
    assert producer.flush(30) == 0

    pipeline.processor.start()

    def owns_its_partitions() -> bool:
        if not pipeline.processor.alive():
            code = pipeline.processor.wait(5)
            raise AssertionError(
                f"the processor exited with {code} restoring the state topic:\n{pipeline.processor.tail(5)}"
            )
        return (pipeline.processor_metric("kycstream_partitions_owned") or 0) >= pipeline.topics.partitions

    wait_until(owns_its_partitions, 60, "the processor took its partitions", every=0.2)

    # The restored state goes on counting: 3 events before the upgrade, this one makes 4.
    body = orjson.dumps({"event": "account.verification", "data": {"id": "upgraded-1", "kyc": {"status": "PASSED"}}})
    headers = {"webhook-id": "wh-upgraded-1", **sign("xendit", body)}
    assert httpx.post(f"{pipeline.url}/webhooks/xendit", content=body, headers=headers, timeout=15).status_code == 200
    wait_until(lambda: _new_states(pipeline, key), 30, f"a new state for {key}", every=0.3)
    new = _new_states(pipeline, key)
    assert [(s["status"], s["event_count"]) for s in new] == [("APPROVED", 4)]
    assert pipeline.processor.stop(signal.SIGTERM) == 0


def _new_states(pipeline: Pipeline, key: str) -> list[dict[str, object]]:
    """State records for `key` written in the current schema (the previous ones are skipped)."""
    found = []
    for record in pipeline.records("state"):
        if record.key == key.encode() and record.value and record.value[2:10].hex() != PREVIOUS_FINGERPRINT:
            found.append(pipeline.codec.decode("VerificationState", record.value))
    return found
