"""Probe (not part of make bench): what a schema-specialised Avro encoder would save the processor.

Encodes the VerificationEvents of the processor bench's records two ways, checks the bytes are
identical, and times both: `Codec.encode(event_to_record(e))` (fastavro, which searches the
branch of every union by validating the value against each branch) and a hand-written encoder
for this one schema (branch known from None / not None). It is a measurement, not production
code: serde.py would need one per record type, a fallback for the schema-registry mode and
history schemas, and a test against fastavro over the golden cases and fuzzed events.

    .venv/bin/python bench/codec_probe.py
"""

from __future__ import annotations

import struct
import sys
import timeit
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repo root first, never bench/
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.kafka.serde import SINGLE_OBJECT_MAGIC, Codec, event_to_record
from processors.model import RawRef, VerificationEvent

STATUS = {s: i for i, s in enumerate(["PENDING", "APPROVED", "REJECTED", "RESUBMISSION_REQUIRED", "REVIEW", "ERROR"])}
OUTCOME = {s: i for i, s in enumerate(["PASS", "FAIL", "ERROR", "SKIPPED"])}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_pack_d = struct.Struct("<d").pack


def _long(n):
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_long(i) for i in range(256)]


def lng(n):
    return _SMALL[n] if 0 <= n < 256 else _long(n)


def s(x):
    b = x.encode()
    return lng(len(b)) + b


def os_(x):  # ["null","string"]
    return b"\x00" if x is None else b"\x02" + s(x)


def ms(dt):
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    d = dt - EPOCH
    return d.days * 86400000 + d.seconds * 1000 + d.microseconds // 1000


def encode_event(e: VerificationEvent, fingerprint: bytes) -> bytes:
    parts = [
        SINGLE_OBJECT_MAGIC,
        fingerprint,
        s(e.event_id),
        s(e.idempotency_key),
        s(e.provider),
        s(e.source),
        s(e.verification_id),
        lng(STATUS[e.status.value]),
        s(e.provider_status),
        os_(e.event_type),
        os_(e.subject_id),
        os_(e.session_id),
        b"\x00" if e.occurred_at is None else b"\x02" + lng(ms(e.occurred_at)),
        lng(ms(e.received_at)),
    ]
    if e.checks:
        parts.append(lng(len(e.checks)))
        for c in e.checks:
            parts += [
                s(c.name),
                lng(OUTCOME[c.outcome.value]),
                b"\x00" if c.score is None else b"\x02" + _pack_d(float(c.score)),
                os_(c.code),
                os_(c.message),
            ]
    parts.append(b"\x00")
    if e.reasons:
        parts.append(lng(len(e.reasons)))
        for r in e.reasons:
            parts += [s(r.code), os_(r.message), os_(r.field)]
    parts.append(b"\x00")
    if e.attributes:
        parts.append(lng(len(e.attributes)))
        for k, v in e.attributes.items():
            parts += [s(k), s(v)]
    parts.append(b"\x00")
    ref = e.raw_ref
    parts.append(
        b"\x00" if ref is None else b"\x02" + s(ref.topic) + lng(ref.partition) + lng(ref.offset) + s(ref.request_id)
    )
    return b"".join(parts)


if __name__ == "__main__":
    from bench.processor import records
    from processors.pipeline import normalize

    c = Codec()
    fp = c._schemas["VerificationEvent"].fingerprint
    ds, _ = records(20000)
    evs = [
        x
        for i, d in enumerate(ds)
        if isinstance(x := normalize(d, RawRef("kyc.webhooks.raw.v1", i % 3, i * 7, d.request_id)), VerificationEvent)
    ]
    bad = 0
    for e in evs:
        if encode_event(e, fp) != c.encode("VerificationEvent", event_to_record(e)):
            bad += 1
    print("events", len(evs), "mismatches", bad)
    n = len(evs)
    t1 = timeit.timeit(lambda: [c.encode("VerificationEvent", event_to_record(e)) for e in evs], number=1) / n * 1e6
    t2 = timeit.timeit(lambda: [encode_event(e, fp) for e in evs], number=1) / n * 1e6
    print(f"to_record + Codec.encode {t1:.1f} us/event; specialised {t2:.1f} us/event")
