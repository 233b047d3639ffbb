"""Both dedup stores behave alike (add/contains/len/discard/pop_expired/close), with the expiry
granularity each one has; and restore_dedup rebuilds a store from a changelog (fake consumer).

Granularity observed:
- MemoryDedupStore files a key under the minute *after* its expiry (ceil to 60 s): a key expiring at
  second s is popped from the first minute boundary >= s, i.e. 0..59 s late, never early.
- SqliteDedupStore keeps the second: a key is popped as soon as now_s >= expires_at_s.
At minute boundaries (expiry and now multiples of 60) both return exactly the same keys.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.avro.records import dedup_to_record
from processors.dedup import DedupStore, MemoryDedupStore, SqliteDedupStore
from processors.diskstore import Memory, PartitionDB
from processors.kafka.serde import Codec
from processors.model import DedupRecord
from processors.normalizer import recovery

KEY = "esign:4f6d9a1e-2b7c-4c1d-9a55-0e6f1b2c3d4e:COMPLETED:VALID:2026-05-08T10:30:00Z"
BASE = 1_778_236_200  # 2026-05-08T10:30:00Z, a minute boundary


def _memory(_: Path) -> DedupStore:
    return MemoryDedupStore()


def _sqlite(directory: Path) -> DedupStore:
    return SqliteDedupStore(directory / "part-0" / "dedup.sqlite")


def _rocksdb(directory: Path) -> DedupStore:
    def never(_: object) -> Any:
        raise AssertionError("no states here")

    return PartitionDB(directory / "part-0", Memory(8 << 20, 4 << 20), never, never).dedup


KINDS = {"memory": _memory, "sqlite": _sqlite, "rocksdb": _rocksdb}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Iterator[DedupStore]:
    s = KINDS[kind](tmp_path)
    yield s
    s.close()


def popped_at(kind: str, expires_at_s: int) -> int:
    """The first now_s at which each store reports the key expired (see module docstring)."""
    return -(-expires_at_s // 60) * 60 if kind == "memory" else expires_at_s


# --- add / contains / len / discard -------------------------------------------------------------------


def test_empty(store: DedupStore) -> None:
    assert len(store) == 0
    assert KEY not in store
    assert store.pop_expired(BASE + 10**6) == []


def test_add_contains_len(store: DedupStore) -> None:
    store.add(KEY, BASE + 600)
    store.add("xendit:webhook-id:w-1", BASE + 600)
    assert KEY in store
    assert "xendit:webhook-id:w-1" in store
    assert "xendit:webhook-id:w-2" not in store
    assert len(store) == 2


def test_adding_a_key_again_keeps_one_entry(store: DedupStore) -> None:
    store.add(KEY, BASE + 600)
    store.add(KEY, BASE + 600)
    store.add(KEY, BASE + 1200)
    assert len(store) == 1
    assert store.pop_expired(BASE + 10**6) == [KEY]


def test_discard(store: DedupStore) -> None:
    store.add(KEY, BASE + 600)
    store.add("other", BASE + 600)
    store.discard(KEY)
    store.discard(KEY)  # absent: no error
    store.discard("never-added")
    assert KEY not in store
    assert len(store) == 1
    assert store.pop_expired(BASE + 600) == ["other"]  # a discarded key is not reported expired


def test_non_ascii_keys_round_trip(store: DedupStore) -> None:
    key = "metamap:vérif-ü:step_completed:💡"
    store.add(key, BASE + 60)
    assert key in store
    assert store.pop_expired(BASE + 60) == [key]


# --- pop_expired ---------------------------------------------------------------------------------------


def test_pop_expired_returns_exactly_the_keys_whose_expiry_passed(store: DedupStore) -> None:
    for minute in (10, 11, 12):
        for n in range(3):
            store.add(f"k{minute}-{n}", BASE + 60 * minute)
    assert store.pop_expired(BASE + 60 * 10 - 1) == []
    assert sorted(store.pop_expired(BASE + 60 * 10)) == ["k10-0", "k10-1", "k10-2"]
    assert store.pop_expired(BASE + 60 * 10) == []  # each key is reported once
    assert len(store) == 6
    assert "k10-0" not in store
    assert "k11-0" in store
    assert sorted(store.pop_expired(BASE + 60 * 12)) == ["k11-0", "k11-1", "k11-2", "k12-0", "k12-1", "k12-2"]
    assert len(store) == 0


@pytest.mark.parametrize("offset", [0, 1, 30, 59, 60, 61])
def test_expiry_granularity(store: DedupStore, kind: str, offset: int) -> None:
    expires = BASE + offset
    due = popped_at(kind, expires)
    assert expires <= due < expires + 60  # never early, at most 59 s late
    store.add(KEY, expires)
    assert store.pop_expired(due - 1) == []
    assert KEY in store
    assert store.pop_expired(due) == [KEY]
    assert KEY not in store


def test_memory_store_rounds_expiry_up_to_the_minute() -> None:
    memory = MemoryDedupStore()
    memory.add(KEY, BASE + 1)
    assert memory.pop_expired(BASE + 1) == []
    assert memory.pop_expired(BASE + 59) == []
    assert memory.pop_expired(BASE + 60) == [KEY]


def test_sqlite_store_expires_to_the_second(tmp_path: Path) -> None:
    sqlite = SqliteDedupStore(tmp_path / "d.sqlite")
    sqlite.add(KEY, BASE + 1)
    assert sqlite.pop_expired(BASE) == []
    assert sqlite.pop_expired(BASE + 1) == [KEY]
    sqlite.close()


def test_key_re_added_with_later_expiry_is_not_popped_at_the_earlier(store: DedupStore) -> None:
    store.add(KEY, BASE + 600)
    store.add(KEY, BASE + 1200)
    assert store.pop_expired(BASE + 600) == []
    assert store.pop_expired(BASE + 1199) == []
    assert KEY in store
    assert store.pop_expired(BASE + 1200) == [KEY]


def test_key_re_added_with_earlier_expiry_is_popped_at_the_earlier(store: DedupStore) -> None:
    store.add(KEY, BASE + 1200)
    store.add(KEY, BASE + 600)
    assert store.pop_expired(BASE + 600) == [KEY]
    assert store.pop_expired(BASE + 1200) == []


def test_discarded_then_re_added_key_is_popped_once(store: DedupStore) -> None:
    store.add(KEY, BASE + 600)
    store.discard(KEY)
    store.add(KEY, BASE + 600)
    assert store.pop_expired(BASE + 600) == [KEY]
    assert len(store) == 0


def test_key_added_after_its_bucket_was_popped_is_popped_again(store: DedupStore) -> None:
    store.add("a", BASE + 60)
    assert store.pop_expired(BASE + 60) == ["a"]
    store.add(KEY, BASE + 60)  # already past: the next sweep reports it
    assert store.pop_expired(BASE + 60) == [KEY]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcde"), st.integers(0, 600)),
        st.tuples(st.just("discard"), st.sampled_from("abcde"), st.just(0)),
        st.tuples(st.just("pop"), st.just(""), st.integers(0, 120)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_both_stores_match_a_model(ops: list[tuple[str, str, int]]) -> None:
    """Random add/discard/pop sequences against a dict model, with each store's granularity."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind, make in KINDS.items():
            s = make(Path(tmp))
            model: dict[str, int] = {}
            now = BASE
            for op, key, n in ops:
                if op == "add":
                    s.add(key, BASE + n)
                    model[key] = BASE + n
                elif op == "discard":
                    s.discard(key)
                    model.pop(key, None)
                else:
                    now += n
                    due = {k for k, exp in model.items() if popped_at(kind, exp) <= now}
                    got = s.pop_expired(now)
                    assert len(got) == len(set(got)), kind
                    assert set(got) == due, (kind, now)
                    for k in due:
                        del model[k]
                assert len(s) == len(model), kind
                assert all(k in s for k in model), kind
            s.close()


def test_utf8_methods_are_add_and_discard_of_the_encoded_key(store: DedupStore) -> None:
    store.add_utf8(KEY.encode(), BASE + 600)
    store.add_utf8("métamap:ü".encode(), BASE + 60)
    assert KEY in store and "métamap:ü" in store
    store.discard_utf8(KEY.encode())
    store.discard_utf8(b"never-added")
    assert KEY not in store and len(store) == 1
    assert store.pop_expired(BASE + 600) == ["métamap:ü"]


def test_keys_that_are_prefixes_of_each_other_empty_or_odd(store: DedupStore) -> None:
    keys = ["", "a", "ab", "a\x00b", "\x00", "\u00fe\u00ff", "a\nb", "😀"]
    for n, key in enumerate(keys):
        store.add(key, BASE + 60 * (n + 1))
    assert all(key in store for key in keys) and "b" not in store and "a\x00" not in store
    store.discard("a")
    assert "a" not in store and "ab" in store and "" in store
    assert sorted(store.pop_expired(BASE + 60 * len(keys))) == sorted(k for k in keys if k != "a")


def test_expiries_before_1970_or_far_ahead(store: DedupStore, kind: str) -> None:
    """Expiry minutes MemoryDedupStore has no 4-byte stamp for are kept apart; the same behaviour."""
    far = 254**4 * 60 + 120  # seconds: past what a stamp holds (the year 9880)
    store.add("past", -120)
    store.add("far", far)
    store.add("moved", far)
    store.add("moved", BASE + 60)  # from the far side to the shards
    assert len(store) == 3 and "past" in store and "far" in store and "moved" in store
    assert store.pop_expired(-180) == []
    assert store.pop_expired(0) == ["past"]
    assert store.pop_expired(BASE + 60) == ["moved"]
    store.add("far", BASE + 120)  # and back
    assert store.pop_expired(BASE + 120) == ["far"]
    assert len(store) == 0


def test_memory_store_against_a_model_through_its_growth() -> None:
    """Thousands of keys: the shards grow fourfold several times; adds, re-adds, discards and
    pops before and after agree with a dict."""
    rng = random.Random(17)
    memory = MemoryDedupStore()
    model: dict[str, int] = {}
    now = BASE
    keys = [f"esign:{rng.getrandbits(64):x}:COMPLETED:VALID:{n}" for n in range(6000)]
    for step in range(20_000):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.75:
            expires = now + rng.randint(-120, 7200)
            memory.add(key, expires)
            model[key] = expires
        elif roll < 0.95:
            memory.discard(key)
            model.pop(key, None)
        else:
            now += rng.randint(0, 300)
            due = sorted((-(-e // 60), k) for k, e in model.items() if -(-e // 60) * 60 <= now)
            got = memory.pop_expired(now)
            assert sorted(got) == sorted(k for _, k in due)
            assert [-(-model[k] // 60) for k in got] == sorted(m for m, _ in due)  # in minute order
            for _, k in due:
                del model[k]
        if step % 2500 == 0:
            assert len(memory) == len(model)
            assert all(k in memory for k in model)
            assert not any(k in memory for k in keys if k not in model)
    assert len(memory) == len(model) and all(k in memory for k in model)
    assert sorted(memory.pop_expired(now + 10**6)) == sorted(model)
    assert len(memory) == 0


# --- close ---------------------------------------------------------------------------------------------


def test_close_is_idempotent(kind: str, tmp_path: Path) -> None:
    s = KINDS[kind](tmp_path)
    s.add(KEY, BASE + 60)
    s.close()
    s.close()  # raises nothing, and leaves what the first close left
    if kind != "rocksdb":  # which keeps its files for the next owner on this disk (test_diskstore.py)
        assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [], "a closed store leaves no file behind"


def test_memory_close_forgets_everything() -> None:
    memory = MemoryDedupStore()
    memory.add(KEY, BASE + 60)
    memory.close()
    assert len(memory) == 0
    assert KEY not in memory
    assert memory.pop_expired(BASE + 10**6) == []


def test_sqlite_file_is_fresh_per_open_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "dedup-kyc.dedup.v1-0.sqlite"
    first = SqliteDedupStore(path)  # parent directories are created
    first.add(KEY, BASE + 60)
    first.close()
    assert not path.exists()
    path.write_bytes(b"stale leftovers from a crashed run")
    second = SqliteDedupStore(path)  # rebuilt from the changelog: never trusts a file left behind
    assert len(second) == 0
    second.close()
    assert not path.exists()


# --- restoring a store from its changelog (a fake consumer: no broker needed) ---------------------------

DEDUP_TOPIC, STATE_TOPIC = "kyc.dedup.v1", "kyc.verification.state.v1"
NOW = datetime.fromtimestamp(BASE, UTC)
DAY = timedelta(days=1)
Record = tuple[str, bytes | None]


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._topic, self._partition, self._offset, self._key, self._value = topic, partition, offset, key, value
        self._error = KafkaError(KafkaError._PARTITION_EOF) if offset < 0 else None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


class _Changelogs:
    """Just enough of confluent_kafka.Consumer for recovery's readers: on assign, each assigned
    partition's records, then one partition-EOF per assigned partition."""

    def __init__(self, logs: dict[tuple[str, int], list[Record]]) -> None:
        self._logs = logs
        self._pending: list[_Msg] = []

    def assign(self, partitions: list[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._pending = [
            _Msg(t, p, offset, k.encode(), v)
            for t, p in tps
            for offset, (k, v) in enumerate(self._logs.get((t, p), []))
        ] + [_Msg(t, p, -1, None, None) for t, p in tps]

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        out, self._pending = self._pending[:num_messages], self._pending[num_messages:]
        return out

    def unassign(self) -> None:
        self._pending = []


def restore_dedup(consumer: Any, codec: Codec, stores: recovery.PartitionStores) -> None:
    """recovery.restore (dedup and state changelogs at once, since 6a7e221); restore_dedup before it."""
    legacy = getattr(recovery, "restore_dedup", None)
    if legacy is None:
        recovery.restore(consumer, codec, DEDUP_TOPIC, STATE_TOPIC, {stores.partition: stores}, NOW, 5)
    else:
        legacy(consumer, codec, DEDUP_TOPIC, stores, NOW, 5)


def _record(codec: Codec, key: str, expires: datetime, events_offset: int = -1) -> Record:
    value = codec.encode(
        "DedupRecord", dedup_to_record(DedupRecord(key, f"id-{key}", expires - 7 * DAY, expires, events_offset))
    )
    return key, value


def _restore(kind: str, tmp_path: Path, records: list[Record]) -> recovery.PartitionStores:
    stores = recovery.PartitionStores(0, KINDS[kind](tmp_path))
    restore_dedup(_Changelogs({(DEDUP_TOPIC, 0): records}), Codec(), stores)
    return stores


def test_restore_applies_records_tombstones_and_expiry(kind: str, tmp_path: Path) -> None:
    codec = Codec()
    stores = _restore(
        kind,
        tmp_path,
        [
            _record(codec, "live", NOW + DAY, events_offset=4),
            _record(codec, "gone", NOW + DAY, events_offset=9),
            ("gone", None),  # tombstone
            _record(codec, "old", NOW - DAY, events_offset=2),
            _record(codec, "edge", NOW),  # expires exactly now: expired
        ],
    )
    assert "live" in stores.dedup
    assert "gone" not in stores.dedup
    assert "old" not in stores.dedup
    assert "edge" not in stores.dedup
    assert sorted(stores.expired) == ["edge", "old"]
    assert stores.restored_keys == len(stores.dedup) == 1
    assert stores.repair_from == 9
    stores.dedup.close()


def test_restore_does_not_list_a_live_key_as_expired(kind: str, tmp_path: Path) -> None:
    codec = Codec()
    stores = _restore(
        kind,
        tmp_path,
        [
            _record(codec, KEY, NOW - DAY),  # first sighting, window passed
            (KEY, None),  # the expiry tombstone (or not yet written: same outcome)
            _record(codec, KEY, NOW + 6 * DAY),  # seen again: a fresh window
        ],
    )
    assert KEY in stores.dedup
    try:
        assert KEY not in stores.expired  # else Engine.restore writes a tombstone for a live key
    finally:
        stores.dedup.close()
