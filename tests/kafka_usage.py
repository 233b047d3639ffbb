"""What Kafka clients really do, recorded as the (resource type, name, operation) pairs Kafka
authorizes them by: to check ACLs against what the code uses, not against a hand-kept list.

`record(monkeypatch)` replaces confluent-kafka's Consumer and Producer (in confluent_kafka itself too)
and AdminClient in every module of processors and gateway, by subclasses that
note each call's resources under the client's `client.id` (a test gives each role its own). The
operations follow Kafka's authorization of the requests behind each call (see
processors/kafka/access.py).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

Use = tuple[str, str, str]  # (resource type, name, operation)

_ORIGINALS: dict[str, Any] = {
    "Consumer": confluent_kafka.Consumer,
    "Producer": confluent_kafka.Producer,
    "AdminClient": confluent_kafka.admin.AdminClient,
}
_Consumer: Any = _ORIGINALS["Consumer"]
_Producer: Any = _ORIGINALS["Producer"]
_AdminClient: Any = _ORIGINALS["AdminClient"]


class Usage:
    def __init__(self) -> None:
        self.uses: defaultdict[str, set[Use]] = defaultdict(set)  # client.id -> what it did
        # Topics a client saw by walking a whole metadata listing (it may have looked for any of
        # them: Kafka hides the topics a client may not Describe).
        self.listed: defaultdict[str, set[str]] = defaultdict(set)
        self._groups: dict[int, str] = {}  # thread -> group of its last consumer_group_metadata()

    def of(self, client_id: str) -> set[Use]:
        return set(self.uses[client_id])

    def add(self, who: str, resource: str, name: str, *operations: str) -> None:
        for operation in operations:
            self.uses[who].add((resource, name, operation))

    def topics(self, who: str, names: Iterable[str], *operations: str) -> None:
        for name in names:
            self.add(who, "topic", name, *operations)


def _tp_topics(partitions: Iterable[Any]) -> set[str]:
    return {tp.topic for tp in partitions}


class _Listing(dict[str, Any]):
    """A metadata listing's topics: a lookup by name is a Describe of that topic; a walk over all of
    them is noted as listed."""

    def __init__(self, topics: dict[str, Any], usage: Usage, who: str) -> None:
        super().__init__(topics)
        self._usage, self._who = usage, who

    def get(self, name: str, default: Any = None) -> Any:
        self._usage.add(self._who, "topic", name, "Describe")
        return super().get(name, default)

    def __getitem__(self, name: str) -> Any:
        self._usage.add(self._who, "topic", name, "Describe")
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self._usage.add(self._who, "topic", str(name), "Describe")
        return super().__contains__(name)

    def _walked(self) -> None:
        self._usage.listed[self._who].update(dict.keys(self))

    def items(self) -> Any:
        self._walked()
        return super().items()

    def keys(self) -> Any:
        self._walked()
        return super().keys()

    def values(self) -> Any:
        self._walked()
        return super().values()

    def __iter__(self) -> Iterator[str]:
        self._walked()
        return super().__iter__()


def _listed(usage: Usage, who: str, metadata: Any, topic: str | None) -> Any:
    if topic is not None:
        usage.add(who, "topic", topic, "Describe")
    else:
        metadata.topics = _Listing(metadata.topics, usage, who)
    return metadata


def _classes(usage: Usage) -> dict[str, type]:
    class RecordingConsumer(_Consumer):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(conf, **kwargs)
            self._who = str(conf.get("client.id", "rdkafka"))
            self._group = str(conf.get("group.id") or "")
            if self._group:  # librdkafka looks up the group's coordinator (FindCoordinator)
                usage.add(self._who, "group", self._group, "Describe")

        def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, topics, "Describe", "Read")
            usage.add(self._who, "group", self._group, "Read", "Describe")  # join, sync, heartbeat, offsets
            return super().subscribe(topics, *args, **kwargs)

        def assign(self, partitions: list[Any]) -> Any:
            usage.topics(self._who, _tp_topics(partitions), "Describe", "Read")  # ListOffsets, Fetch
            return super().assign(partitions)

        def incremental_assign(self, partitions: list[Any]) -> Any:
            usage.topics(self._who, _tp_topics(partitions), "Describe", "Read")
            return super().incremental_assign(partitions)

        def seek(self, partition: Any) -> Any:
            usage.topics(self._who, [partition.topic], "Describe", "Read")
            return super().seek(partition)

        def commit(self, *args: Any, **kwargs: Any) -> Any:
            offsets = kwargs.get("offsets")
            message = kwargs.get("message") or (args[0] if args else None)
            topics = (
                _tp_topics(offsets)
                if offsets is not None
                else {message.topic()}
                if message is not None
                else _tp_topics(self.assignment())
            )
            usage.topics(self._who, topics, "Read")
            usage.add(self._who, "group", self._group, "Read")
            return super().commit(*args, **kwargs)

        def committed(self, partitions: list[Any], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, _tp_topics(partitions), "Describe")
            usage.add(self._who, "group", self._group, "Describe")
            return super().committed(partitions, *args, **kwargs)

        def get_watermark_offsets(self, partition: Any, *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, [partition.topic], "Describe")
            return super().get_watermark_offsets(partition, *args, **kwargs)

        def offsets_for_times(self, partitions: list[Any], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, _tp_topics(partitions), "Describe")
            return super().offsets_for_times(partitions, *args, **kwargs)

        def consumer_group_metadata(self) -> Any:
            usage._groups[threading.get_ident()] = self._group  # for the send_offsets_to_transaction after it
            return super().consumer_group_metadata()

        def list_topics(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
            return _listed(usage, self._who, super().list_topics(topic, *args, **kwargs), topic)

    class RecordingProducer(_Producer):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(conf, **kwargs)
            self._who = str(conf.get("client.id", "rdkafka"))
            self._txn = str(conf.get("transactional.id") or "")
            self._written: set[str] = set()

        def produce(self, *args: Any, **kwargs: Any) -> Any:
            topic = args[0] if args else kwargs["topic"]
            if topic not in self._written:  # a hot path: note each topic once
                self._written.add(topic)
                usage.add(self._who, "topic", topic, "Write", "Describe")
            return super().produce(*args, **kwargs)

        def _transaction(self) -> None:
            usage.add(self._who, "transactionalId", self._txn, "Write", "Describe")

        def init_transactions(self, *args: Any, **kwargs: Any) -> Any:
            self._transaction()
            return super().init_transactions(*args, **kwargs)

        def begin_transaction(self, *args: Any, **kwargs: Any) -> Any:
            self._transaction()
            return super().begin_transaction(*args, **kwargs)

        def commit_transaction(self, *args: Any, **kwargs: Any) -> Any:
            self._transaction()
            return super().commit_transaction(*args, **kwargs)

        def abort_transaction(self, *args: Any, **kwargs: Any) -> Any:
            self._transaction()
            return super().abort_transaction(*args, **kwargs)

        def send_offsets_to_transaction(self, offsets: list[Any], metadata: Any, *args: Any, **kwargs: Any) -> Any:
            self._transaction()
            group = usage._groups.get(threading.get_ident(), "?unknown group")
            usage.add(self._who, "group", group, "Read")  # TxnOffsetCommit
            usage.topics(self._who, _tp_topics(offsets), "Read")
            return super().send_offsets_to_transaction(offsets, metadata, *args, **kwargs)

        def list_topics(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
            return _listed(usage, self._who, super().list_topics(topic, *args, **kwargs), topic)

    class RecordingAdminClient(_AdminClient):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(conf, **kwargs)
            self._who = str(conf.get("client.id", "rdkafka"))

        def create_topics(self, new_topics: list[Any], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, [t.topic for t in new_topics], "Create")
            return super().create_topics(new_topics, *args, **kwargs)

        def describe_configs(self, resources: list[Any], *args: Any, **kwargs: Any) -> Any:
            for r in resources:
                usage.add(self._who, r.restype.name.lower(), r.name, "DescribeConfigs")
            return super().describe_configs(resources, *args, **kwargs)

        def alter_configs(self, resources: list[Any], *args: Any, **kwargs: Any) -> Any:
            for r in resources:
                usage.add(self._who, r.restype.name.lower(), r.name, "AlterConfigs")
            return super().alter_configs(resources, *args, **kwargs)

        def incremental_alter_configs(self, resources: list[Any], *args: Any, **kwargs: Any) -> Any:
            for r in resources:
                usage.add(self._who, r.restype.name.lower(), r.name, "AlterConfigs")
            return super().incremental_alter_configs(resources, *args, **kwargs)

        def create_partitions(self, new_partitions: list[Any], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, [p.topic for p in new_partitions], "Alter")
            return super().create_partitions(new_partitions, *args, **kwargs)

        def delete_topics(self, topics: list[str], *args: Any, **kwargs: Any) -> Any:
            usage.topics(self._who, topics, "Delete")
            return super().delete_topics(topics, *args, **kwargs)

        def describe_consumer_groups(self, group_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            for group in group_ids:
                usage.add(self._who, "group", group, "Describe")
            return super().describe_consumer_groups(group_ids, *args, **kwargs)

        def list_topics(self, topic: str | None = None, *args: Any, **kwargs: Any) -> Any:
            return _listed(usage, self._who, super().list_topics(topic, *args, **kwargs), topic)

    return {"Consumer": RecordingConsumer, "Producer": RecordingProducer, "AdminClient": RecordingAdminClient}


def _modules() -> Iterator[Any]:
    import gateway
    import processors

    for package in (processors, gateway):
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):
                yield importlib.import_module(info.name)


def record(monkeypatch: pytest.MonkeyPatch) -> Usage:
    """Record every Kafka client made from now on (until the monkeypatch is undone)."""
    usage = Usage()
    classes = _classes(usage)
    modules = list(_modules())  # all imported first: one imported after the patch would keep it for good
    monkeypatch.setattr(confluent_kafka, "Consumer", classes["Consumer"])
    monkeypatch.setattr(confluent_kafka, "Producer", classes["Producer"])
    # Not confluent_kafka.admin.AdminClient itself: its __init__ calls super(AdminClient, self) by that name.
    for module in modules:
        for name, original in _ORIGINALS.items():
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, classes[name])
    return usage
