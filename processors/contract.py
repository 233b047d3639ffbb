"""kycstream's contract with the teams around it, as data: the AsyncAPI 3.0 document of every topic
it reads or writes, built from the topic specs and the Avro schemas in schemas/.

`kycstream asyncapi` writes it to docs/asyncapi.yaml; a test fails when that file drifts from this.
Who writes which key and header is said once here; tests/integration/test_contract.py checks it
against the records the real gateway and processor write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import yaml

from processors.avro.codec import SINGLE_OBJECT_MAGIC, RecordType, expand_schema, fingerprint, load_definitions
from processors.providers import REGISTRY
from schemas import SCHEMA_DIR

if TYPE_CHECKING:
    from processors.kafka.topics import TopicSpec

ASYNCAPI_VERSION = "3.0.0"
AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING = "0.5.0"

_PROVIDERS = "|".join(sorted(REGISTRY))
VERIFICATION_KEY: dict[str, Any] = {
    "type": "string",
    "pattern": f"^({_PROVIDERS}):.+$",
    "description": "`provider:verification_id`: every record of one verification has it, so they stay in order.",
}
REQUEST_ID_KEY: dict[str, Any] = {
    "type": "string",
    "format": "uuid",
    "description": "The delivery's request id, when its verification id could not be read from the body.",
}
IDEMPOTENCY_KEY: dict[str, Any] = {
    "type": "string",
    "pattern": f"^({_PROVIDERS}):.+$",
    "description": "The idempotency key of one provider result (`provider:verification_id:…`, or "
    "`provider:sha256:<hex>` of the canonical body); `event_id` is derived from it.",
}
_RAW_KEY: dict[str, Any] = {"anyOf": [VERIFICATION_KEY, REQUEST_ID_KEY]}


@dataclass(frozen=True)
class Message:
    """One kind of record on one topic: its value type (None: a tombstone), key and headers."""

    name: str
    title: str
    summary: str
    value: RecordType | None
    key: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> what it holds (always present)
    optional: Mapping[str, str] = field(default_factory=dict)  # name -> what it holds (when present)


@dataclass(frozen=True)
class Operation:
    role: str  # the kycstream command that does it
    action: str  # "send" | "receive"
    topic: str  # a TopicSpec role
    messages: tuple[str, ...]
    summary: str
    group: str | None = None  # the consumer group, for receive operations that join one


_REDRIVEN = "kycstream-redrive-of"
# Written only when tracing is on (OTEL_TRACES_EXPORTER; docs/observability.md).
_TRACE_CONTEXT = {
    "traceparent": "W3C trace context of the span that wrote the record (only with tracing on).",
    "tracestate": "W3C trace state, when the trace has one (only with tracing on).",
}
MESSAGES: tuple[Message, ...] = (
    Message(
        "rawCallback",
        "A webhook delivery",
        "A provider called the gateway: the delivery exactly as received (origin `callback`), "
        "written by `kycstream gateway` (or its spool forwarder, unchanged) once authenticated.",
        "RawDelivery",
        _RAW_KEY,
        {
            "kycstream-request-id": "The request id the gateway answered with (also in the value).",
            "kycstream-source": "The webhook source (route) name.",
            "kycstream-provider": "The provider of that source.",
        },
        _TRACE_CONTEXT,
    ),
    Message(
        "rawPoll",
        "A polled status",
        "The reconciler asked the provider's status API because no result came in time (origin `poll`).",
        "RawDelivery",
        VERIFICATION_KEY | {"description": "`provider:verification_id`: the answer's, else the expectation's."},
        {"kycstream-origin": "`poll`."},
    ),
    Message(
        "rawFetch",
        "A fetched result",
        "A callback was only a notice (Incode's ONBOARDING_FINISHED): the reconciler fetched the result "
        "(origin `fetch`).",
        "RawDelivery",
        VERIFICATION_KEY,
        {"kycstream-origin": "`fetch`."},
    ),
    Message(
        "rawRedrive",
        "A redriven delivery",
        "`kycstream redrive`: a dead letter's original record, key and value as they were, sent back once "
        "the current normalizers accept it.",
        "RawDelivery",
        _RAW_KEY,
        {_REDRIVEN: "`<dlq topic>/<partition>/<offset>` of the dead letter it came from."},
    ),
    Message(
        "verificationEvent",
        "A verification event",
        "One normalized, deduplicated provider result. Consumers may dedupe on `event_id` (deterministic).",
        "VerificationEvent",
        VERIFICATION_KEY,
        {"kycstream-event-id": "The event's `event_id` (also in the value), for filters."},
        _TRACE_CONTEXT,
    ),
    Message(
        "verificationState",
        "The current state of a verification",
        "The latest state; compacted, so the last record of a key is the table's row. Never regresses: a "
        "late PENDING never overwrites a decision.",
        "VerificationState",
        VERIFICATION_KEY,
    ),
    Message(
        "dedupRecord",
        "A dedup changelog entry",
        "The processors' dedup store: a provider result already emitted as an event.",
        "DedupRecord",
        IDEMPOTENCY_KEY,
    ),
    Message(
        "dedupTombstone",
        "A dedup tombstone",
        "No value: the key left the dedup window.",
        None,
        IDEMPOTENCY_KEY,
    ),
    Message(
        "deadLetter",
        "A dead letter",
        "A record that could not be handled, with the reason and the original record's bytes; replayable "
        "with `kycstream redrive` once fixed.",
        "DeadLetter",
        {
            "type": "string",
            "description": "The original record's key, as it was: a raw record's (`provider:verification_id` "
            "or a request id), an expectation's or an event's.",
        },
        {"kycstream-reason": "The reason code (also in the value), for filters."},
    ),
    Message(
        "expectation",
        "An expected verification",
        "A team started this verification and expects a result (`POST /expectations/{source}`).",
        "Expectation",
        VERIFICATION_KEY,
    ),
    Message(
        "expectationTombstone",
        "An expectation tombstone",
        "No value: the verification was settled or given up on, so it is no longer tracked.",
        None,
        VERIFICATION_KEY,
    ),
)

_RAW_MESSAGES = ("rawCallback", "rawPoll", "rawFetch", "rawRedrive")


def operations(processor_group: str, reconciler_group: str) -> tuple[Operation, ...]:
    p, r = processor_group, reconciler_group
    return (
        Operation("gateway", "send", "raw", ("rawCallback",), "Each authenticated webhook, before it answers 200."),
        Operation("gateway", "send", "expected", ("expectation",), "Each `POST /expectations/{source}`."),
        Operation("process", "receive", "raw", _RAW_MESSAGES, "Normalizes each delivery.", p),
        Operation("process", "send", "events", ("verificationEvent",), "One event per new provider result."),
        Operation("process", "send", "state", ("verificationState",), "The state after each batch, per key."),
        Operation("process", "send", "dedup", ("dedupRecord", "dedupTombstone"), "The dedup store's changelog."),
        Operation("process", "send", "dlq", ("deadLetter",), "Deliveries that could not be normalized."),
        Operation(
            "process", "receive", "dedup", ("dedupRecord", "dedupTombstone"), "Restores the dedup store (assigned)."
        ),
        Operation("process", "receive", "state", ("verificationState",), "Restores the state store (assigned)."),
        Operation("process", "receive", "events", ("verificationEvent",), "Repairs the dedup store (assigned)."),
        Operation("reconcile", "receive", "expected", ("expectation", "expectationTombstone"), "Tracks them.", r),
        Operation("reconcile", "receive", "state", ("verificationState",), "Sees which are settled.", f"{r}-state"),
        Operation("reconcile", "receive", "events", ("verificationEvent",), "Fetches notices' results.", f"{r}-fetch"),
        Operation("reconcile", "send", "raw", ("rawPoll",), "A polled status, when no result came in time."),
        Operation("reconcile", "send", "raw", ("rawFetch",), "A fetched result, after a notice."),
        Operation("reconcile", "send", "dlq", ("deadLetter",), "Expectations given up on; fetches that failed."),
        Operation("reconcile", "send", "expected", ("expectationTombstone",), "Forgets the settled and the given up."),
        Operation("reconcile", "send", "expected", ("expectation",), "Its poll time, written back."),
        Operation("redrive", "receive", "dlq", ("deadLetter",), "Dead letters since the last redrive.", f"{p}-redrive"),
        Operation("redrive", "send", "raw", ("rawRedrive",), "Those the current normalizers accept."),
        Operation("redrive", "send", "dlq", ("deadLetter",), "Those still failing, with their new reason."),
        Operation(
            "redrive",
            "send",
            "events",
            ("verificationEvent",),
            "A fetch letter's notice event, again (same event_id, `kycstream-redrive-of` header): fetched again.",
        ),
        Operation(
            "redrive",
            "send",
            "expected",
            ("expectation",),
            "A poll letter's expectation, posted again (expected_at now).",
        ),
    )


_CHANNELS = {
    "raw": "Every authenticated delivery, exactly as received, whatever its origin (callback, poll, fetch): "
    "the source of truth everything else is rebuilt from (`kycstream replay`). Holds personal data.",
    "events": "Normalized verification events, deduplicated: what downstream services consume.",
    "state": "The current state per verification, a compacted table.",
    "dedup": "The processors' dedup store changelog (internal).",
    "dlq": "Records that could not be handled, with the reason (`kycstream redrive` sends them back).",
    "expected": "Verifications a team started and expects a result for (a compacted table).",
}
_FRAMING = (
    "Avro single-object encoding: `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer "
    "schema (these 10 bytes are the message's `x-single-object-prefix`), then the Avro binary body. With a "
    "schema registry configured (`SCHEMA_REGISTRY_URL`), the Confluent wire format instead: `00`, a 4-byte "
    "big-endian schema id, the body. See docs/consumers.md."
)


def asyncapi(
    specs: Sequence[TopicSpec],
    *,
    processor_group: str,
    reconciler_group: str,
    version: str,
    schema_dir: Path = SCHEMA_DIR,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as plain data (dump it with `dump`)."""
    definitions = load_definitions(schema_dir)
    by_role = {s.role: s for s in specs}
    ops = operations(processor_group, reconciler_group)
    used = _messages_by_topic(ops)
    channels = {role: _channel(role, spec, used.get(role, [])) for role, spec in by_role.items()}
    operations_doc: dict[str, Any] = {}
    for op in ops:
        operations_doc[_operation_id(op, operations_doc)] = _operation(op, by_role[op.topic])

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "kycstream",
            "version": version,
            "description": "KYC provider webhooks into Kafka: the topics kycstream reads and writes, their keys, "
            "headers and Avro values. Generated by `kycstream asyncapi` from the topic specs and schemas/; "
            "topic names, partitions and retention are the defaults (all configurable).",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "Your Kafka cluster (`kafka.bootstrap_servers` / KAFKA_BOOTSTRAP_SERVERS).",
                "variables": {"bootstrap": {"default": "localhost:9092"}},
            }
        },
        "channels": channels,
        "operations": operations_doc,
        "components": {"messages": {m.name: _message(m, definitions) for m in MESSAGES}},
    }


def _messages_by_topic(ops: Sequence[Operation]) -> dict[str, list[str]]:
    """The messages each topic (by role) carries: those of the operations on it, first use first."""
    used: dict[str, list[str]] = {}
    for op in ops:
        for name in op.messages:
            if name not in used.setdefault(op.topic, []):
                used[op.topic].append(name)
    return used


def _channel(role: str, spec: TopicSpec, messages: Sequence[str]) -> dict[str, Any]:
    return {
        "address": spec.name,
        "title": spec.name,
        "description": _CHANNELS[role],
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {"kafka": _topic_binding(spec)},
    }


def _operation(op: Operation, spec: TopicSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "action": op.action,
        "channel": {"$ref": f"#/channels/{op.topic}"},
        "title": f"kycstream {op.role}: {op.action} {spec.name}",
        "summary": op.summary,
        "tags": [{"name": op.role}],
        "messages": [{"$ref": f"#/channels/{op.topic}/messages/{name}"} for name in op.messages],
    }
    if op.group is not None:
        doc["bindings"] = {
            "kafka": {"groupId": {"type": "string", "enum": [op.group]}, "bindingVersion": KAFKA_BINDING}
        }
    return doc


def _topic_binding(spec: TopicSpec) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for name, value in sorted(spec.config.items()):
        conf[name] = value.split(",") if name == "cleanup.policy" else int(value)
    return {
        "partitions": spec.partitions,
        "replicas": spec.replication_factor,
        "topicConfiguration": conf,
        "bindingVersion": KAFKA_BINDING,
    }


def _operation_id(op: Operation, taken: Mapping[str, Any]) -> str:
    base = f"{op.role}{op.action.capitalize()}{op.topic.capitalize()}"
    if base not in taken:
        return base
    return base + "".join(name[0].upper() + name[1:] for name in op.messages)


def _message(m: Message, definitions: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": m.name, "title": m.title, "summary": m.summary}
    if m.headers or m.optional:
        described = {**m.headers, **m.optional}
        doc["headers"] = {
            "type": "object",
            "required": list(m.headers),
            "properties": {name: {"type": "string", "description": text} for name, text in described.items()},
        }
    if m.value is None:
        doc["description"] = "A tombstone: the record's value is null (compaction removes the key)."
    else:
        schema = expand_schema(m.value, definitions)
        doc["description"] = _FRAMING
        doc["payload"] = {"schemaFormat": AVRO_FORMAT, "schema": schema}
        doc["x-single-object-prefix"] = (SINGLE_OBJECT_MAGIC + fingerprint(fastavro.parse_schema(schema))).hex(" ")
    doc["bindings"] = {"kafka": {"key": dict(m.key), "bindingVersion": KAFKA_BINDING}}
    return doc


def dump(document: Mapping[str, Any]) -> str:
    """YAML in the document's own order, lines not folded: byte-stable for the drift test."""
    header = "# Generated by `kycstream asyncapi` from processors/contract.py and schemas/: do not edit.\n"
    return header + yaml.dump(dict(document), Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=1_000_000)


class _NoAliases(yaml.SafeDumper):
    """Shared key schemas written out in full at each use, not as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
