"""What each role may do on Kafka: the one table the Strimzi KafkaUsers (deploy/strimzi/topics-users/
users.yaml) are written from, derived from the configured topic and group names.

Kafka authorizes each request on a resource (topic, consumer group, transactional id, cluster):
Fetch needs Read on the topic; Produce, Write; a group's join, heartbeat and offset commit need Read
on the group; finding its coordinator and reading its committed offsets, Describe; a transactional
producer needs Write on its transactional id; CreateTopics, Create on the topic; DescribeConfigs
and DescribeGroups, Describe(Configs). A consumer that only `assign()`s and never commits still
looks up its group's coordinator, so its group needs Describe.

tests/integration/test_access.py records what each role's Kafka clients really do in a run against
the broker and fails when this table, or a KafkaUser, lacks any of it; tests/deploy checks that
users.yaml says exactly what this table says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from processors.settings import ProcessorSection, ReconcileSection, TopicSettings

Role = Literal["gateway", "processor", "reconciler", "operator", "topics"]
ROLES: tuple[Role, ...] = ("gateway", "processor", "reconciler", "operator", "topics")
Resource = Literal["topic", "group", "transactionalId", "cluster"]
Pattern = Literal["literal", "prefix"]

# Kafka's implied operations: an ACL that allows the key also allows these.
IMPLIES: dict[str, frozenset[str]] = {
    "Read": frozenset({"Describe"}),
    "Write": frozenset({"Describe"}),
    "Delete": frozenset({"Describe"}),
    "Alter": frozenset({"Describe"}),
    "AlterConfigs": frozenset({"DescribeConfigs"}),
}
# The groups of readers that join no group of their own (tail, inspect, replay's DLQ scan):
# config.consumer's default `kycstream-reader` and reader.follow's `kycstream-reader-<uuid>`.
READER_GROUPS = "kycstream-reader"
TARGET_ROLES = ("events", "state", "dedup", "dlq")  # what a replay writes (replay.TARGET_ROLES)
_TARGET = ("Read", "Write", "Create", "Describe", "DescribeConfigs")  # creates, reads back, fills


@dataclass(frozen=True, slots=True)
class Grant:
    resource: Resource
    name: str
    pattern: Pattern
    operations: frozenset[str]

    def allows(self, resource: str, name: str, operation: str) -> bool:
        if resource != self.resource:
            return False
        if not (name == self.name if self.pattern == "literal" else name.startswith(self.name)):
            return False
        return operation in self.operations or any(operation in IMPLIES.get(op, ()) for op in self.operations)


def allowed(grants: list[Grant], resource: str, name: str, operation: str) -> bool:
    return any(g.allows(resource, name, operation) for g in grants)


def _g(resource: Resource, name: str, *operations: str, pattern: Pattern = "literal") -> Grant:
    return Grant(resource, name, pattern, frozenset(operations))


def replay_prefix(live: str) -> str:
    """What the name of a topic a replay creates in place of `live` starts with: the live name less a
    trailing version (kyc.verification.events.v1 -> kyc.verification.events., so .v2 or .rebuilt)."""
    return re.sub(r"v\d+$", "", live)


def processor_transactional_id(p: ProcessorSection) -> tuple[str, Pattern]:
    """exactly_once: the runner's transactional.id, `kycstream-<group>-<host>` unless set."""
    return (p.transactional_id, "literal") if p.transactional_id else (f"kycstream-{p.group_id}-", "prefix")


def table(topics: TopicSettings, processor: ProcessorSection, reconcile: ReconcileSection) -> dict[Role, list[Grant]]:
    """Every grant of every role. Both processing guarantees are covered, so switching one needs no
    new user."""
    t, group, rgroup = topics, processor.group_id, reconcile.group_id
    txn, txn_pattern = processor_transactional_id(processor)
    all_topics = (t.raw, t.events, t.state, t.dedup, t.dlq, t.expected)
    return {
        # /readyz checks that all six topics exist, and Kafka hides the topics a client may not Describe.
        "gateway": [
            _g("topic", t.raw, "Write", "Describe"),
            _g("topic", t.expected, "Write", "Describe"),  # POST /expectations/<source>
            *(_g("topic", name, "Describe") for name in (t.events, t.state, t.dedup, t.dlq)),
        ],
        "processor": [
            _g("topic", t.raw, "Read", "Describe"),
            _g("group", group, "Read", "Describe"),
            _g("group", f"{group}-restore", "Describe"),  # assigned, never committed: restores, repairs
            # at_least_once reads events back on each assignment (events without their dedup records).
            _g("topic", t.events, "Read", "Write", "Describe"),
            _g("topic", t.state, "Read", "Write", "Describe"),
            _g("topic", t.dedup, "Read", "Write", "Describe"),
            _g("topic", t.dlq, "Write", "Describe"),
            _g("transactionalId", txn, "Write", "Describe", pattern=txn_pattern),  # exactly_once
        ],
        "reconciler": [
            _g("topic", t.expected, "Read", "Write", "Describe"),  # tombstones of settled expectations
            _g("group", rgroup, "Read", "Describe"),
            _g("topic", t.state, "Read", "Describe"),
            _g("group", f"{rgroup}-state", "Describe"),  # state and DLQ, assigned, never committed
            _g("topic", t.events, "Read", "Describe"),
            _g("group", f"{rgroup}-fetch", "Read", "Describe"),
            _g("topic", t.raw, "Write", "Describe"),
            _g("topic", t.dlq, "Read", "Write", "Describe"),  # reads back its own letters after a restart
        ],
        # replay, redrive, tail and inspect (one person's commands, so one user).
        "operator": [
            _g("topic", t.raw, "Read", "Write", "Describe"),  # redrive sends fixed deliveries back
            _g("topic", t.expected, "Read", "Describe"),
            # replay's targets, the live ones or fresh ones it creates named like them (…events.v2).
            *(_g("topic", replay_prefix(getattr(t, r)), *_TARGET, pattern="prefix") for r in TARGET_ROLES),
            _g("group", group, "Read", "Describe"),  # replay refuses while it has members; grow hands offsets over
            _g("group", f"{group}-restore", "Describe"),  # replay restores like a processor
            _g("group", f"{group}-replay-", "Read", "Describe", pattern="prefix"),
            _g("transactionalId", f"{group}-replay-", "Write", "Describe", pattern="prefix"),  # exactly_once
            _g("group", f"{group}-redrive", "Read", "Describe"),
            # partitions grow: a new raw topic named like the live one (…raw.v1.p12), its positions, its replay
            _g("topic", replay_prefix(t.raw), *_TARGET, pattern="prefix"),
            _g("group", f"{group}-grow", "Read", "Describe"),
            _g("transactionalId", f"{group}-grow", "Write", "Describe"),  # exactly_once
            _g("group", READER_GROUPS, "Describe", pattern="prefix"),
        ],
        # `kycstream topics create`, where no Strimzi Topic Operator creates them (no KafkaUser in deploy/).
        "topics": [_g("topic", name, "Create", "Describe") for name in all_topics],
    }


# Strimzi's KafkaUser `spec.authorization.acls` (simple authorization): the same grants as YAML data.
_OPERATION_ORDER = ("Read", "Write", "Create", "Describe", "DescribeConfigs", "AlterConfigs", "Alter", "Delete")


def to_strimzi(grants: list[Grant]) -> list[dict[str, object]]:
    return [
        {
            "resource": {"type": g.resource, "name": g.name, "patternType": g.pattern},
            "operations": sorted(g.operations, key=_OPERATION_ORDER.index),
        }
        for g in grants
    ]


def from_strimzi(acls: list[dict[str, Any]]) -> list[Grant]:
    return [
        Grant(
            a["resource"]["type"],
            a["resource"].get("name", ""),
            "prefix" if a["resource"].get("patternType") == "prefix" else "literal",
            frozenset(a["operations"]),
        )
        for a in acls
    ]
