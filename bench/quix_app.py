"""The peer: the normalizer's work written as a Quix Streams application (run in bench/.venv-quix).

Raw envelope (Avro RawDelivery) -> the same pure normalization as kycstream
(processors.pipeline.normalize, imported through PYTHONPATH) -> dedup by idempotency key in the
Quix state store (RocksDB, with its changelog topic) -> Avro VerificationEvent -> events topic.
Rejections (bad bodies) are dropped and counted. Producer settings as kycstream's: acks=all,
idempotence, lz4, linger.ms 5. Stops after the N-th input record, then Quix flushes and commits.

Prints one JSON line: records, events, duplicates, rejected, seconds (first record consumed ->
run() returned, outputs flushed and offsets committed), per_s.

    PYTHONPATH=. bench/.venv-quix/bin/python bench/quix_app.py --bootstrap 127.0.0.1:9092 \
        --raw RAW --events EVENTS --records 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import uuid
from typing import Any

from quixstreams import Application, State

from processors.avro.records import delivery_from_record, event_to_record
from processors.kafka.serde import Codec
from processors.model import RawRef, Rejection
from processors.pipeline import normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()

    codec = Codec()
    counts = {"records": 0, "events": 0, "duplicates": 0, "rejected": 0}
    clock: dict[str, float] = {}
    state_dir = tempfile.mkdtemp(prefix="bench-quix-state-")
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel=logging.WARNING,
        producer_extra_config={"acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"},
    )
    raw = app.topic(args.raw, value_deserializer="bytes", key_deserializer="str")
    events = app.topic(args.events, value_serializer="bytes", key_serializer="str")

    def decode(value: bytes, key: Any, timestamp: int, headers: Any) -> Any:
        if not clock:
            clock["start"] = time.perf_counter()
        counts["records"] += 1
        if counts["records"] >= args.records:
            app.stop()
        delivery = delivery_from_record(codec.decode("RawDelivery", value))
        outcome = normalize(delivery, RawRef(args.raw, 0, 0, delivery.request_id))
        if isinstance(outcome, Rejection):
            counts["rejected"] += 1
            return None
        return outcome

    def first_time(event: Any, state: State) -> bool:
        if state.exists(event.idempotency_key):
            counts["duplicates"] += 1
            return False
        state.set(event.idempotency_key, 1)
        counts["events"] += 1
        return True

    sdf = app.dataframe(raw)
    sdf = sdf.apply(decode, metadata=True)
    sdf = sdf.filter(lambda event: event is not None)
    sdf = sdf.filter(first_time, stateful=True)
    sdf = sdf.apply(lambda event: codec.encode("VerificationEvent", event_to_record(event), args.events))
    sdf.to_topic(events)
    app.run()
    elapsed = time.perf_counter() - clock.get("start", time.perf_counter())
    print(json.dumps({**counts, "seconds": elapsed, "per_s": counts["records"] / elapsed}))


if __name__ == "__main__":
    main()
