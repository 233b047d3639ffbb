"""End-to-end fixtures: one broker per session (see brokers.py for the order), one Pipeline per test.

These tests run only with KYCSTREAM_E2E=1 (`make e2e` sets it); elsewhere (e.g. `make test`) they
are skipped, since they start real processes and run for minutes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.kafka.serde import Codec
from tests.e2e import brokers
from tests.e2e.pipeline import Pipeline, gateway_status_ok

ENABLED = os.environ.get("KYCSTREAM_E2E") == "1"
HERE = Path(__file__).parent
_BROKER_LINE = pytest.StashKey[str]()
_FAILED = pytest.StashKey[bool]()
_NOTES = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="end-to-end: run with `make e2e` (or KYCSTREAM_E2E=1)")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
            if not ENABLED:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    line = config.stash.get(_BROKER_LINE, None)
    if line:
        terminalreporter.write_sep("-", "end-to-end")
        terminalreporter.write_line(line)
        for note in config.stash.get(_NOTES, []):
            terminalreporter.write_line(note)


def _announce(config: pytest.Config, line: str) -> None:
    """Shown at once, whatever the capture mode (and again in the summary)."""
    config.stash[_BROKER_LINE] = line
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:
        print(line, file=sys.__stderr__)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


@pytest.fixture(scope="session")
def e2e_broker(pytestconfig: pytest.Config) -> Iterator[brokers.Broker]:
    broker = brokers.choose()
    _announce(pytestconfig, f"e2e broker: {broker.describe}; outage test: {broker.outage_kind}")
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def note(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line for the end-of-run summary (what a soak measured), prefixed with the test's id."""

    def add(line: str) -> None:
        pytestconfig.stash.setdefault(_NOTES, []).append(f"{request.node.name}: {line}")
        print(line)

    return add


@pytest.fixture
def make_pipeline(
    e2e_broker: brokers.Broker, codec: Codec, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Pipeline]]:
    """Pipelines for this test (topics, config and ports of their own); stopped and checked at the end."""
    made: list[Pipeline] = []

    def make(**options: object) -> Pipeline:
        workdir = tmp_path / f"pipeline-{len(made)}"
        workdir.mkdir()
        options.setdefault("image", e2e_broker.image)  # containers of the product image, else the CLI
        pipeline = Pipeline(e2e_broker.bootstrap, workdir, codec, **options)  # type: ignore[arg-type]
        made.append(pipeline)
        return pipeline

    yield make

    failed = request.node.stash.get(_FAILED, True)
    for pipeline in made:
        if failed:
            pipeline.kill_all()
            print(pipeline.tails())
            continue
        try:
            codes = pipeline.stop()
        finally:
            pipeline.kill_all()
        assert "processor" not in codes or codes["processor"] == 0, (codes, pipeline.processor.tail())
        assert "gateway" not in codes or gateway_status_ok(codes["gateway"]), (codes, pipeline.gateway.tail())
        others = {name: code for name, code in codes.items() if name not in ("gateway", "processor")}
        assert set(others.values()) <= {0}, (others, pipeline.tails())


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    """Topics created, gateway ready, processor owning every raw partition."""
    return make_pipeline().start()
