"""The store on disk keeps what was committed, with the offsets it was committed with, and nothing
else: a change not committed (an output Kafka never acknowledged) is gone after a reopen."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.avro.records import state_from_record, state_to_record
from processors.diskstore import Checkpoint, Memory, PartitionDB
from processors.kafka.serde import Codec
from processors.model import VerificationState, VerificationStatus

BASE = 1_778_236_200
WHEN = datetime.fromtimestamp(BASE, UTC)
TOPIC = "kyc.verification.state.v1"
MEMORY = Memory(8 << 20, 4 << 20)


def _state(key: str, status: VerificationStatus = VerificationStatus.APPROVED) -> VerificationState:
    provider, vid = key.split(":", 1)
    return VerificationState(
        key=key,
        provider=provider,
        verification_id=vid,
        status=status,
        last_event_id="e-1",
        updated_at=WHEN,
        occurred_at=WHEN,
        decided_at=WHEN,
        event_count=1,
        raw_offset=7,
    )


def _open(path: Path) -> PartitionDB:
    codec = Codec()
    return PartitionDB(
        path,
        MEMORY,
        lambda s: codec.encode("VerificationState", state_to_record(s), TOPIC),
        lambda raw: state_from_record(codec.decode("VerificationState", raw, TOPIC)),
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "kyc.dedup.v1" / "0"


@pytest.fixture
def db(path: Path) -> Iterator[PartitionDB]:
    store = _open(path)
    yield store
    store.close()


def test_what_is_committed_survives_a_reopen_with_its_offsets(db: PartitionDB, path: Path) -> None:
    db.dedup.add("k1", BASE + 600)
    db.states["xendit:v1"] = _state("xendit:v1")
    db.commit(dedup_next=11, state_next=5, anchor=3, partitions=3, identity={"d": "id-1"})
    db.close()
    again = _open(path)
    try:
        assert "k1" in again.dedup and len(again.dedup) == 1
        assert again.states.get("xendit:v1") == _state("xendit:v1")
        assert len(again.states) == 1
        assert again.checkpoint == Checkpoint(11, 5, 3, 1, 1, 3, {"d": "id-1"})
    finally:
        again.close()


def test_what_is_not_committed_is_gone_after_a_reopen(db: PartitionDB, path: Path) -> None:
    db.dedup.add("acked", BASE + 600)
    db.commit(dedup_next=1)
    db.dedup.add("never-acked", BASE + 600)
    db.states["xendit:v1"] = _state("xendit:v1")
    assert "never-acked" in db.dedup  # visible before the commit, to the batch that wrote it
    db.close()
    again = _open(path)
    try:
        assert "acked" in again.dedup
        assert "never-acked" not in again.dedup
        assert again.states.get("xendit:v1") is None
        assert (len(again.dedup), len(again.states), again.checkpoint.dedup_next) == (1, 0, 1)
    finally:
        again.close()


def test_rollback_forgets_the_pending_changes_and_their_counts(db: PartitionDB) -> None:
    db.dedup.add("a", BASE + 60)
    db.commit(dedup_next=1)
    db.dedup.add("b", BASE + 60)
    db.dedup.discard("a")
    db.rollback()
    assert "a" in db.dedup and "b" not in db.dedup and len(db.dedup) == 1


def test_offsets_and_the_anchor_only_move_forward(db: PartitionDB) -> None:
    db.commit(dedup_next=10, state_next=10, anchor=10)
    db.commit(dedup_next=4, state_next=4, anchor=4)
    assert (db.checkpoint.dedup_next, db.checkpoint.state_next, db.checkpoint.anchor) == (10, 10, 10)


def test_expired_keys_are_popped_in_expiry_order_and_stay_popped(db: PartitionDB, path: Path) -> None:
    db.dedup.add("late", BASE + 120)
    db.dedup.add("early", BASE + 60)
    db.dedup.add("live", BASE + 6000)
    db.dedup.add("early", BASE + 30)  # re-added earlier: one entry, the new expiry
    db.commit(dedup_next=4)
    assert db.dedup.pop_expired(BASE + 120) == ["early", "late"]
    db.close()  # the pop was committed: between batches nothing else is pending
    again = _open(path)
    try:
        assert (sorted(k for k in ("early", "late", "live") if k in again.dedup), len(again.dedup)) == (["live"], 1)
        assert again.dedup.pop_expired(BASE + 120) == []
    finally:
        again.close()


def test_state_records_kept_encoded_and_tombstoned(db: PartitionDB) -> None:
    codec = Codec()
    value = codec.encode("VerificationState", state_to_record(_state("esign:s1")), TOPIC)
    db.states.put_encoded(b"esign:s1", value)
    db.states.put_encoded(b"esign:s2", value)
    db.states.put_encoded(b"esign:s2", None)
    db.commit(state_next=3)
    assert db.states.get("esign:s1") == _state("esign:s1")
    assert "esign:s2" not in db.states and len(db.states) == 1


def test_wipe_starts_empty_at_offset_zero(db: PartitionDB) -> None:
    db.dedup.add("a", BASE + 60)
    db.commit(dedup_next=9, identity={"d": "x"})
    db.wipe()
    assert "a" not in db.dedup and len(db.dedup) == 0
    assert db.checkpoint == Checkpoint()


def test_a_closed_store_says_so(db: PartitionDB) -> None:
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = "a" in db.dedup


def test_a_rebuild_reads_nothing_counts_at_its_end_and_leaves_stale_expiry_entries_to_pop(
    db: PartitionDB, path: Path
) -> None:
    assert db.begin_rebuild()
    db.dedup.add("k", BASE + 60)
    db.dedup.add("k", BASE + 600)  # again, later: its first `e` entry is stale
    db.dedup.add("gone", BASE + 60)
    db.dedup.discard("gone")
    db.states["xendit:v1"] = _state("xendit:v1")
    with pytest.raises(RuntimeError, match="rebuilt"):
        _ = "k" in db.dedup
    db.end_rebuild(dedup_next=4, state_next=1)
    assert (len(db.dedup), len(db.states), db.checkpoint.keys, db.checkpoint.dedup_next) == (1, 1, 1, 4)
    assert db.dedup.pop_expired(BASE + 60) == []  # the stale entries dropped, nothing expired
    assert db.dedup.pop_expired(BASE + 600) == ["k"]
    assert not db.begin_rebuild()  # a store holding anything takes a tail key by key


def test_a_rebuild_adder_writes_as_add_does_into_the_current_batch(db: PartitionDB) -> None:
    assert db.dedup.rebuild_adder() is None  # not rebuilding: add_utf8 reads first and counts
    assert db.begin_rebuild()
    add = db.dedup.rebuild_adder()
    assert add is not None
    add(b"k", BASE + 60)
    add(b"k", BASE + 600)  # again, later: its first `e` entry is stale
    db.commit(dedup_next=2)  # a new batch: the adder of the one before is not used again
    add = db.dedup.rebuild_adder()
    assert add is not None
    add("m\u00e9".encode(), BASE + 60)
    db.end_rebuild(dedup_next=3)
    assert (len(db.dedup), "k" in db.dedup, "m\u00e9" in db.dedup) == (2, True, True)
    assert db.dedup.pop_expired(BASE + 60) == ["m\u00e9"]
    assert db.dedup.pop_expired(BASE + 600) == ["k"]
    assert db.dedup.rebuild_adder() is None


# A child writes a rebuild in batches of 1,000 keys, each committed with the offset after it (the
# write-ahead log off), and kills itself before end_rebuild; `then_logged`: after end_rebuild, one
# more key committed with the log on, then the kill.
_CRASH = """
import os, signal, sys
from pathlib import Path
from processors.diskstore import Memory, PartitionDB
db = PartitionDB(Path(sys.argv[1]), Memory(8 << 20, 1 << 20), bytes, bytes)
assert db.begin_rebuild()
for i in range(30_000):
    db.dedup.add(f"key-{i}", 2_000_000_000)
    if i % 1000 == 999:
        db.commit(dedup_next=i + 1)
if sys.argv[2] == "then_logged":
    db.end_rebuild(dedup_next=30_000)
    db.dedup.add("logged", 2_000_000_000)
    db.commit(dedup_next=30_001)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("then_logged", [False, True])
def test_a_crash_leaves_a_checkpoint_whose_keys_are_all_there(path: Path, then_logged: bool) -> None:
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", _CRASH, str(path), "then_logged" if then_logged else "-"])
    assert child.returncode == -9
    again = _open(path)
    try:
        claimed = again.checkpoint.dedup_next  # offset 30,000 is the logged key's
        assert all(f"key-{i}" in again.dedup for i in range(min(claimed, 30_000))), claimed
        assert len(again.dedup) == sum(f"key-{i}" in again.dedup for i in range(30_000)) + ("logged" in again.dedup)
        if then_logged:  # flushed at end_rebuild: the logged write cannot outlive the rebuild's
            assert (claimed, len(again.dedup), "logged" in again.dedup) == (30_001, 30_001, True)
    finally:
        again.close()
