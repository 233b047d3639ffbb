"""processors.normalizer.limits: the processor's settings checked against its Kafka clients' limits at start."""

from __future__ import annotations

from typing import Any

import pytest

from processors.errors import ConfigError
from processors.normalizer import limits
from processors.settings import ProcessorSection


def _section(**fields: Any) -> ProcessorSection:
    return ProcessorSection(**fields)


def test_the_defaults_fit_librdkafkas_defaults() -> None:
    p = _section()
    limits.check_batch_size(p, {})
    limits.check_restore_timeout(p, {})
    assert limits.liveness_deadline(p) == 300  # restore_timeout_s 240, plus a minute


def test_a_batch_whose_outputs_exceed_the_producer_queue_is_refused_with_what_to_set() -> None:
    limits.check_batch_size(_section(batch_size=50_000), {})
    with pytest.raises(ConfigError, match=r"set processor.batch_size to 50000 or less, or raise queue.buffering"):
        limits.check_batch_size(_section(batch_size=50_001), {})
    # exactly_once writes each event's dedup record in the batch's transaction too
    with pytest.raises(ConfigError, match=r"3 per raw record in exactly_once.* 333 or less"):
        limits.check_batch_size(
            _section(batch_size=334, processing_guarantee="exactly_once"), {"queue.buffering.max.messages": "1000"}
        )


def test_a_restore_timeout_at_or_past_max_poll_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"restore_timeout_s 300 is not below .*max.poll.interval.ms \(300000 ms\)"):
        limits.check_restore_timeout(_section(restore_timeout_s=300), {})
    limits.check_restore_timeout(_section(restore_timeout_s=300), {"max.poll.interval.ms": "600000"})


def test_a_liveness_deadline_shorter_than_a_legitimate_wait_is_refused() -> None:
    p = _section(delivery_timeout_s=220, flush_timeout_s=30, liveness_timeout_s=250)
    with pytest.raises(ConfigError, match=r"not above the longest legitimate wait .*\(250 s"):
        limits.liveness_deadline(p)
    assert limits.liveness_deadline(_section(liveness_timeout_s=241)) == 241
