"""Pure normalization: one raw delivery in, one verification event or one rejection out.

The runner acts on the answer (produce, dead-letter, commit); nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import orjson

from processors.model import (
    FETCH_ID_HEADER,
    FETCH_KIND_HEADER,
    FETCH_NOTICE_AT_HEADER,
    Normalized,
    Notice,
    NotReady,
    RawDelivery,
    RawRef,
    Rejection,
    VerificationEvent,
    to_millis,
)
from processors.prose import plain
from processors.providers import REGISTRY, Provider, fetching
from processors.providers._read import timestamp

# Fixed namespace: event ids must be the same on every processor, every replay, every version.
EVENT_ID_NAMESPACE = uuid.UUID("6f1b3c52-7c1e-4f0a-9a51-2f3d0c8b9e10")


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


_VARIANT_DIGIT = {f"{n:x}": f"{n & 0x3 | 0x8:x}" for n in range(16)}  # RFC 4122 variant bits, one hex digit


def event_id_for(idempotency_key: str) -> str:
    """str(uuid.uuid5(EVENT_ID_NAMESPACE, idempotency_key)), without building UUID objects (5x faster):
    the digest's hex text with the version digit and the variant digit set."""
    h = hashlib.sha1(_NAMESPACE_BYTES + idempotency_key.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


def reversal(event: VerificationEvent) -> VerificationEvent:
    """`event` as a reversal: result words seen before, said again later by the provider (verified
    -> rejected -> verified; see state.repeat). Its own event id, still derived from its key and,
    so that every replay derives the same one, from the provider time that makes it new."""
    assert event.occurred_at is not None, "a reversal is newer by the provider's time: it has one"
    moment = to_millis(event.occurred_at).isoformat(timespec="milliseconds")
    return dataclasses.replace(event, event_id=event_id_for(f"{event.idempotency_key}@{moment}"))


def uuid_text(b: bytearray, version: int) -> str:
    """str(uuid.UUID(bytes=b, version=version)) for 16 bytes, setting version and variant in `b`."""
    b[6] = (b[6] & 0x0F) | (version << 4)
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_body(body: bytes) -> Mapping[str, Any] | Rejection:
    if not body.strip():
        return Rejection("empty_body", "the delivery has an empty body")
    try:
        doc = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))  # a UTF-8 BOM may be ignored (RFC 8259)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejection("not_an_object", f"body is JSON {type(doc).__name__}, not an object")
    return doc


def raised_at(exc: BaseException) -> str:
    """Where `exc` was raised (file:line): what a log or a dead letter says of a provider module's
    failure. Not its message: a message may quote the body (int("Jane") raises ValueError("invalid
    literal for int() with base 10: 'Jane'")), and bodies hold personal data."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{PurePath(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def routing_id(provider: str, body: bytes, on_error: Callable[[Exception], None] | None = None) -> str | None:
    """`provider:verification_id` when the body yields it, else None (the gateway's record key).
    A provider module that raises must not refuse a delivery: None, and `on_error` is told."""
    module = REGISTRY.get(provider)
    doc = parse_body(body) if module is not None else None
    if module is None or isinstance(doc, Rejection) or doc is None:
        return None
    try:
        vid = module.verification_id(doc)
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        return None
    return f"{provider}:{vid}" if vid else None


def body_hash_key(provider: str, doc: Mapping[str, Any]) -> str:
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return f"{provider}:sha256:{hashlib.sha256(canonical).hexdigest()}"


def normalize(delivery: RawDelivery, raw_ref: RawRef | None = None) -> VerificationEvent | Notice | Rejection:
    """An event; a notice that is no verification result; or why the delivery is a dead letter."""
    module = REGISTRY.get(delivery.provider)
    if module is None:
        return Rejection("unknown_provider", f"no normalizer for provider {delivery.provider!r}")
    doc = parse_body(delivery.body)
    if isinstance(doc, Rejection):
        return doc
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    try:
        if delivery.origin == "fetch":
            result: Normalized | Notice | Rejection = _fetched(module, doc, headers)
        else:
            result = module.normalize(doc, headers)
    except Exception as exc:  # the contract is "event or reason", never a crashed processor
        return Rejection(
            "normalizer_error", f"{delivery.provider} normalizer raised {type(exc).__name__} at {raised_at(exc)}"
        )
    if isinstance(result, Rejection | Notice):
        return result
    # Codes, not prose: provider text stays in the raw topic. MESSAGES is optional for a provider module.
    result = plain(result, getattr(module, "MESSAGES", frozenset()))
    return _event(delivery, raw_ref, result, result.idempotency_key or body_hash_key(delivery.provider, doc))


def _fetched(module: Provider, doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
    """A result the reconciler fetched: its kind and verification id travel in the envelope's headers
    (the answer itself may not name the verification)."""
    kind, vid = headers.get(FETCH_KIND_HEADER), headers.get(FETCH_ID_HEADER)
    fetcher = fetching(module)
    if fetcher is None or not kind or not vid:
        return Rejection("unrecognized_event", f"a fetched {module.NAME} answer without its kind and verification id")
    result = fetcher.normalize_fetched(kind, vid, doc)
    if isinstance(result, NotReady):  # the reconciler only writes ready answers; an old one may not be
        return Rejection("not_ready", f"fetched {module.NAME} {kind} was not ready: {result.detail}")
    if isinstance(result, Normalized) and result.occurred_at is None:
        # The API gave no decision time: the result is as old as the notice that asked for it, so
        # a decision that arrived after that notice (a manual review) is not overridden by it.
        noticed = timestamp(headers.get(FETCH_NOTICE_AT_HEADER))
        if noticed is not None:
            return dataclasses.replace(result, occurred_at=noticed)
    return result


def _event(delivery: RawDelivery, raw_ref: RawRef | None, found: Normalized, idempotency_key: str) -> VerificationEvent:
    return VerificationEvent(
        event_id=event_id_for(idempotency_key),
        idempotency_key=idempotency_key,
        provider=delivery.provider,
        source=delivery.source,
        verification_id=found.verification_id,
        status=found.status,
        provider_status=found.provider_status,
        received_at=delivery.received_at,
        occurred_at=found.occurred_at,
        raw_ref=raw_ref,
        event_type=found.event_type,
        subject_id=found.subject_id,
        session_id=found.session_id,
        checks=found.checks,
        reasons=found.reasons,
        attributes=found.attributes,
    )
