"""reader.latest_first: the catch-up backlog of `tail --count N` (no broker: the items are made here)."""

from __future__ import annotations

from processors.kafka.reader import CaughtUp, Record, latest_first


def _record(partition: int, offset: int, timestamp_ms: int) -> Record:
    return Record("t", partition, offset, None, b"v", timestamp_ms, ())


def test_the_latest_by_timestamp_not_the_last_read() -> None:
    # Partition 0 is read first but holds the newest records; partition 1's were written earlier.
    p0 = [_record(0, o, 1000 + o) for o in range(3)]
    p1 = [_record(1, o, 100 + o) for o in range(3)]
    out = list(latest_first([*p0, *p1, CaughtUp()], 2))
    assert out == [p0[1], p0[2], CaughtUp()]


def test_the_last_n_of_each_partition_then_the_n_latest_in_time_order() -> None:
    p0 = [_record(0, o, t) for o, t in enumerate((10, 40, 50))]
    p1 = [_record(1, o, t) for o, t in enumerate((20, 30, 60))]
    out = list(latest_first([p0[0], p1[0], p0[1], p1[1], p0[2], p1[2], CaughtUp()], 3))
    assert out == [p0[1], p0[2], p1[2], CaughtUp()]


def test_fewer_than_n_are_all_yielded_and_later_records_pass_as_they_come() -> None:
    old, new = _record(0, 0, 5), _record(1, 0, 1)
    later = [_record(0, 1, 7), CaughtUp(), _record(1, 1, 2)]
    out = list(latest_first([old, new, CaughtUp(), *later], 5))
    assert out == [new, old, CaughtUp(), *later]


def test_nothing_is_yielded_before_caught_up() -> None:
    assert list(latest_first([_record(0, 0, 1), _record(0, 1, 2)], 1)) == []
