"""processors.logs: a logger used before configure() follows the configuration given after."""

from __future__ import annotations

import orjson
import pytest

from processors import logs


def test_a_logger_follows_the_latest_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.get("kycstream.test")
    try:
        logs.configure("INFO", "json")
        log.debug("hidden")
        log.info("shown", n=1)
        logs.configure("DEBUG", "json")  # the logger cached INFO on first use; it must not keep it
        log.debug("now_shown")
        assert logs.DEBUG
        logs.configure("WARNING", "json")
        log.info("hidden_again")
        assert not logs.DEBUG
    finally:
        logs.configure("INFO", "console")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [("shown", "info"), ("now_shown", "debug")]
