"""What an operator does next to `make run`, from another terminal: replay, tail, redrive, and the
runbook (docs/runbook.md) run as written. `kycstream run` here is the real one, with its own
embedded broker; the other commands get no --config and find deploy/kycstream.dev.yaml as it did."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from processors.kafka import embedded
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import committed_to_end, post, wait_until

pytestmark = pytest.mark.broker
REPO = Path(__file__).parents[2]
KYCSTREAM = [sys.executable, "-m", "processors.cli"]
LIVE = TopicSettings()
BEARER = {"authorization": "Bearer dev-secret"}


@dataclass
class Running:
    url: str
    kafka: KafkaSettings
    terminal: dict[str, str]  # the environment of "another terminal": no KYCSTREAM_* at all
    log: Path
    process: subprocess.Popen[bytes]

    def kycstream(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KYCSTREAM, *args], env=self.terminal, cwd=REPO, capture_output=True, text=True, timeout=120
        )


@contextmanager
def make_run(tmp_path: Path) -> Iterator[Running]:
    """`kycstream run` as `make run` starts it, minus the fixed ports (shared machine): its own broker."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KYCSTREAM_", "KAFKA_", "SCHEMA_REGISTRY"))}
    broker_port, gateway_port = embedded.free_port(), embedded.free_port()
    env = {
        **clean,
        "KYCSTREAM_GATEWAY__PORT": str(gateway_port),
        "KYCSTREAM_GATEWAY__SPOOL_DIR": str(tmp_path / "spool"),
        "KYCSTREAM_PROCESSOR__METRICS_PORT": "0",
        "KYCSTREAM_RECONCILE__METRICS_PORT": "0",
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        # Its own session, so the test's "Ctrl-C" reaches its whole process group as a terminal's would.
        process = subprocess.Popen(
            [*KYCSTREAM, "run", "--broker-port", str(broker_port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Running(
        f"http://127.0.0.1:{gateway_port}",
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker_port}"),
        {**clean, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}"},
        log,
        process,
    )
    try:
        wait_until(lambda: _answers(f"{running.url}/healthz") or process.poll() is not None, 60, "the gateway answers")
        assert process.poll() is None, log.read_text()
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _seed(running: Running) -> None:
    """The README's two curls and one bad body, processed and committed."""
    url = running.url
    xendit = b'{"event":"account.verification","data":{"id":"57fb4e076fa3fa296b7f5a97","kyc":{"status":"PASSED"}}}'
    esign = b'{"submissionId":"d208917d","status":"COMPLETED","result":"INVALID","reasonCode":"DUKCAPIL_REJECTED"}'
    answers = [
        post(f"{url}/webhooks/xendit", xendit, {"x-callback-token": "dev-secret", "webhook-id": "wh-1"}),
        post(f"{url}/webhooks/esign", esign, BEARER, method="PUT"),
        post(f"{url}/webhooks/esign", b'{"submissionId": "bad-1", "status": NumberInt(200)}', BEARER),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    wait_until(
        lambda: committed_to_end(running.kafka, "kycstream-normalizer", LIVE.raw),
        60,
        "the processor of `kycstream run` committed every raw record",
    )


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _stop(running: Running) -> list[str]:
    """Ctrl-C in `make run`'s terminal: SIGINT to its process group. Its log's lines."""
    os.killpg(running.process.pid, signal.SIGINT)
    assert running.process.wait(60) == 0, running.log.read_text()
    return running.log.read_text().splitlines()


def test_replay_tail_and_redrive_from_another_terminal_after_make_run(tmp_path: Path) -> None:
    """Issue 18's "Done when", as written."""
    with make_run(tmp_path) as running:
        _seed(running)
        live_events = _lines(running.kycstream("tail", "--topic", "events", "--from-beginning", "--timeout", "3"))
        assert len(live_events) == 2
        live_dlq = _lines(running.kycstream("tail", "--topic", "dlq", "--from-beginning", "--timeout", "3"))
        assert [d["reason"] for d in live_dlq] == ["invalid_json"]

        replay = running.kycstream(
            *("replay", "--from-beginning", "--events-topic", "x.events", "--state-topic", "x.state"),
            *("--dedup-topic", "x.dedup", "--dlq-topic", "x.dlq"),
        )
        assert replay.returncode == 0, replay.stderr
        assert replay.stderr.startswith("config: deploy/kycstream.dev.yaml\n")
        assert {"created x.events", "created x.state", "created x.dedup", "created x.dlq"} <= set(
            replay.stderr.splitlines()
        )
        assert f"replayed 3 records of {LIVE.raw}: 2 events emitted, 0 already emitted, 0 notices, 1 dead letters" in (
            replay.stderr
        )

        fresh = _lines(running.kycstream("tail", "--topic", "x.events", "--from-beginning", "--timeout", "5"))
        assert sorted(fresh, key=str) == sorted(live_events, key=str)
        again = _lines(running.kycstream("tail", "--topic", "dlq", "--from-beginning", "--timeout", "3"))
        assert len(again) == len(live_dlq), "the live DLQ holds what it held"
        assert [
            d["reason"]
            for d in _lines(running.kycstream("tail", "--topic", "x.dlq", "--from-beginning", "--timeout", "3"))
        ] == ["invalid_json"]
        dry = running.kycstream("redrive", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "0 dead letters would be redriven" in dry.stderr
        assert "1 would be still failing: invalid_json" in dry.stderr

        # The new topics are like the ones they stand in for: 3 partitions (the dev config), compacted state.
        admin = AdminClient({"bootstrap.servers": running.kafka.bootstrap_servers})
        assert {n: len(admin.list_topics(n, timeout=10).topics[n].partitions) for n in ("x.events", "x.state")} == {
            "x.events": 3,
            "x.state": 3,
        }
        (future,) = admin.describe_configs([ConfigResource("topic", "x.state")]).values()
        assert future.result()["cleanup.policy"].value == "compact"

        # Into the live topics beside `make run`'s processor: refused, naming the group (stop it first).
        refused = running.kycstream("replay", "--from-beginning")
        assert refused.returncode == 2, refused.stderr
        assert "kycstream-normalizer" in refused.stderr and "--while-live" in refused.stderr
        # With --while-live, up to what it committed: nothing missing, and the dead letter the live
        # DLQ holds is not written twice.
        live = running.kycstream("replay", "--from-beginning", "--while-live")
        assert live.returncode == 0, live.stderr
        assert f"1 dead letters (1 already in {LIVE.dlq}, not written again)" in live.stderr
        assert len(_lines(running.kycstream("tail", "--topic", "dlq", "--from-beginning", "--timeout", "3"))) == 1

        lines = _stop(running)
    last = lines[-5:]
    # uvicorn ends with 130 after a clean shutdown on SIGINT, as a shell does.
    assert last[0] in ("stopped gateway (exit 0)", "stopped gateway (exit 130, the Ctrl-C convention)")
    assert last[1:3] == ["stopped processor (exit 0)", "stopped reconciler (exit 0)"]
    assert last[3] == f"nothing undelivered: the spool is empty and every record of {LIVE.raw} is processed"
    assert last[4] == "stopped the embedded broker (memory-only: its topics are gone)"
    assert not [line for line in lines if "Disconnected" in line], "the roles left a broker that still answered"


def _runbook_blocks() -> list[tuple[str, str]]:
    """(section, script) of every ```sh block of docs/runbook.md, in order."""
    text = (REPO / "docs" / "runbook.md").read_text()
    blocks, section = [], ""
    for match in re.finditer(r"^## ([^\n]+)$|^```sh\n(.*?)^```$", text, re.M | re.S):
        if match.group(1):
            section = match.group(1)
        else:
            blocks.append((section, match.group(2)))
    return blocks


def test_the_runbook_runs_as_written(tmp_path: Path) -> None:
    blocks = _runbook_blocks()
    assert len(blocks) >= 8
    out: dict[str, str] = {}
    with make_run(tmp_path) as running:
        _seed(running)
        for section, script in blocks:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env=running.terminal,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert result.returncode == 0, f"{section}:\n{script}\n{result.stderr}"
            out[section] = out.get(section, "") + result.stdout
        _stop(running)
    table, doc = out["Reading one verification"].rsplit("\n{", 1)
    assert table.startswith("esign:d208917d: REJECTED after 1 event(s)")
    one = json.loads("{" + doc)
    assert one["state"]["status"] == "REJECTED"
    assert [(e["kind"], e.get("status")) for e in one["timeline"] if e["kind"] != "delivery"] == [
        ("event", "REJECTED"),
        ("state", "REJECTED"),
    ]
    assert [e["origin"] for e in one["timeline"] if e["kind"] == "delivery"] == ["callback"]
    rebuilt = [json.loads(line) for line in out["Rebuilding the state table"].splitlines() if line.startswith("{")]
    assert {r["verification_id"]: r["status"] for r in rebuilt} == {
        "57fb4e076fa3fa296b7f5a97": "APPROVED",
        "d208917d": "REJECTED",
    }
