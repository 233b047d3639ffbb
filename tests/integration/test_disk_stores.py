"""Stores on disk (processor.dedup_store / state_store: rocksdb): a restart reads only the tail of the
changelogs, what a crashed owner wrote to them but not to its store included; a store whose
changelog was recreated is rebuilt, not trusted; one built for another partition count refuses."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processors.avro.records import dedup_record
from processors.diskstore import Memory, PartitionDB
from processors.errors import ConfigError
from processors.kafka import AdminClient, Producer, config, topics
from processors.kafka.serde import Codec
from processors.normalizer import recovery
from processors.normalizer.runner import Engine
from processors.settings import KafkaSettings, ProcessorSettings, TopicSettings
from tests.conftest import processing, produce_raw, raw_delivery, read, unique, wait_until

pytestmark = pytest.mark.broker


@contextmanager
def _engine(kafka: KafkaSettings, names: TopicSettings, state_dir: Path) -> Iterator[Engine]:
    """An engine owning every raw partition, with both stores on disk under `state_dir`."""
    section = {"group_id": unique("disk"), "dedup_store": "rocksdb", "state_store": "rocksdb", "state_dir": state_dir}
    engine = Engine(ProcessorSettings(kafka=kafka, topics=names, processor=section))
    try:
        engine.restore(list(range(engine.check_partitions())))
        yield engine
    finally:
        engine.close()


def _xendit(i: int) -> bytes:
    return json.dumps({"event": "account.verification", "data": {"id": f"d-{i}", "kyc": {"status": "PASSED"}}}).encode()


def _write_dedup(kafka: KafkaSettings, codec: Codec, names: TopicSettings, partition: int, key: str) -> None:
    """A dedup record as an owner writes it, then crashes before its store learns it."""
    expires = datetime.now(UTC) + timedelta(days=7)
    record = dedup_record(key, "ev-crashed", int(time.time() * 1000), int(expires.timestamp() * 1000), -1)
    producer = Producer(config.producer(kafka))
    producer.produce(names.dedup, codec.encode("DedupRecord", record, names.dedup), key.encode(), partition=partition)
    assert producer.flush(10) == 0


def test_a_restart_reads_only_the_tail_what_a_crashed_owner_wrote_included(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    names = make_topics(1)
    deliveries = [raw_delivery("xendit", _xendit(i), {"webhook-id": f"w-{i}"}) for i in range(30)]
    produce_raw(kafka, names.raw, deliveries, codec)
    with processing(kafka, names, dedup_store="rocksdb", state_store="rocksdb", state_dir=tmp_path):
        read(kafka, names.dedup, codec, "DedupRecord", at_least=30)
        read(kafka, names.state, codec, "VerificationState", at_least=30)
    _write_dedup(kafka, codec, names, 0, "xendit:webhook-id:crashed")  # in the changelog, not in the store
    with _engine(kafka, names, tmp_path) as engine:
        stores = engine.owner.owned[0]
        assert stores.read_records == 1, "only the record past the store's offset was read"
        assert "xendit:webhook-id:crashed" in stores.dedup
        assert len(stores.dedup) == 31 and len(stores.states) == 30
        assert stores.states.get("xendit:d-7") is not None


def test_a_store_whose_changelog_was_recreated_is_rebuilt_not_trusted(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    names = make_topics(1)
    _write_dedup(kafka, codec, names, 0, "old-key")
    with _engine(kafka, names, tmp_path) as engine:
        assert "old-key" in engine.owner.owned[0].dedup
    ids = recovery.identify(AdminClient(config.admin(kafka)), [names.dedup])
    admin = AdminClient(config.admin(kafka))
    for future in admin.delete_topics([names.dedup, names.state]).values():
        future.result(10)
    wait_until(lambda: names.dedup not in admin.list_topics(timeout=5).topics, 30, "the changelogs deleted")
    topics.create_all(kafka, names)
    assert recovery.identify(admin, [names.dedup]) != ids, "a recreated topic has a new id"
    _write_dedup(kafka, codec, names, 0, "new-key")
    _write_dedup(kafka, codec, names, 0, "newer-key")  # the new changelog is past the old store's offset
    with _engine(kafka, names, tmp_path) as engine:
        stores = engine.owner.owned[0]
        assert "old-key" not in stores.dedup, "the store of the deleted changelog was wiped"
        assert "new-key" in stores.dedup and "newer-key" in stores.dedup
        assert stores.read_records == 2


def test_a_store_built_for_another_partition_count_refuses_to_start(
    make_topics: Callable[..., TopicSettings], kafka: KafkaSettings, tmp_path: Path
) -> None:
    names = make_topics(2)
    with _engine(kafka, names, tmp_path):
        pass
    codec = Codec()
    store = PartitionDB(
        recovery.disk_path(tmp_path, names, 0), Memory(8 << 20, 4 << 20), codec.encode, codec.decode
    )  # as if built when the topics had 3 partitions
    store.commit(partitions=3)
    store.close()
    with (
        pytest.raises(ConfigError, match=r"built for 3 partitions and the topics have 2 now.*runbook"),
        _engine(kafka, names, tmp_path),
    ):
        pass
