"""`kycstream reconcile` SIGKILLed mid-poll and restarted, three times (issue 13).

The reconciler runs as the gateway and processor do (a container of the image in container mode,
on the host's network, else a CLI process) against a fake provider API served over real HTTP on
127.0.0.1 by the test: Xendit's account API answers PASSED, Signicat's process API never knows the
process (404), so that expectation is given up on. "Mid-poll" is a fact, not a timing: while the
test holds the API, every Xendit poll it receives stays unanswered, and the reconciler is killed
only once one such poll has reached the API; the tick that made it is then blocked, with whatever it
produced before its polls (a dead letter of a given-up expectation) already in Kafka.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processors.kafka import embedded
from tests.conftest import committed_to_end, post, serving_app, wait_until
from tests.e2e.pipeline import Pipeline, Role

API_KEY = "e2e-expectations-key"
GIVE_UP_AFTER_S = 2


class ProviderApi:
    """Xendit's GET /v2/accounts/{id} (PASSED) and Signicat's process (404); counts every poll.
    While `holding`, each Xendit poll waits unanswered until `release()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.polls: Counter[str] = Counter()
        self.holding = False
        self.held = 0  # Xendit polls waiting now
        self._releases = 0

    def hold(self) -> None:
        with self._lock:
            self.holding = True

    def release(self) -> None:
        """Answer what is held (to a client that may be gone) and hold nothing more."""
        with self._lock:
            self.holding, self.held = False, 0
            self._releases += 1

    async def xendit(self, request: Request) -> Response:
        vid = request.path_params["vid"]
        with self._lock:
            self.polls[vid] += 1
            held, releases = self.holding, self._releases
            self.held += held
        while held and self._releases == releases:
            await asyncio.sleep(0.02)  # sleep: a fake server's deliberate latency (holds until released)
        kyc = {"status": "PASSED", "verified_at": "2026-05-08T10:30:00Z"}
        return JSONResponse({"id": vid, "updated": "2026-05-08T10:31:00Z", "kyc": kyc})

    async def signicat(self, request: Request) -> Response:
        with self._lock:
            self.polls[request.path_params["pid"]] += 1
        return JSONResponse({"error": "not found"}, status_code=404)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/accounts/{vid}", self.xendit, methods=["GET"]),
                Route("/assure/dossiers/{dossier}/processes/{pid}", self.signicat, methods=["GET"]),
            ]
        )


@pytest.fixture
def api() -> Iterator[tuple[ProviderApi, str]]:
    fake = ProviderApi()
    with serving_app(fake.app()) as url:
        try:
            yield fake, url
        finally:
            fake.release()  # nothing left waiting when the server stops


def _reconciled(pipeline: Pipeline, api_url: str) -> Role:
    """Gateway with the expectations API on; Xendit and Signicat polled at `api_url`; the
    reconciler as a role of the pipeline (container or CLI process), of its own group, not started."""
    config = yaml.safe_load(pipeline.config_path.read_text())
    config["gateway"]["expectations_api_keys"] = [API_KEY]
    poll = {"base_url": api_url, "token": "api-token", "window_s": 1, "rate_per_s": 50, "concurrency": 8}
    config["sources"]["xendit"]["poll"] = poll
    config["sources"]["signicat"]["poll"] = poll | {"give_up_after_s": GIVE_UP_AFTER_S}
    pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "KYCSTREAM_RECONCILE__GROUP_ID": f"{pipeline.group}-reconciler",
        "KYCSTREAM_RECONCILE__METRICS_PORT": str(embedded.free_port()),
    }
    return pipeline.role("reconciler", ["reconcile"], env)


def _expect(pipeline: Pipeline, source: str, vid: str, lookup: dict[str, str] | None = None) -> None:
    body = json.dumps({"verification_id": vid, "lookup": lookup or {}}).encode()
    response = post(f"{pipeline.url}/expectations/{source}", body, {"authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text


def _approved(pipeline: Pipeline, vids: list[str]) -> bool:
    states = pipeline.latest_states()
    return all(states.get(f"xendit:{vid}", {}).get("status") == "APPROVED" for vid in vids)


def _tombstoned(pipeline: Pipeline, keys: list[str]) -> bool:
    last: dict[bytes, bytes | None] = {}
    for record in pipeline.records("expected"):
        last[record.key or b""] = record.value
    return all(key.encode() in last and last[key.encode()] is None for key in keys)


def _given_up(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [d for d in pipeline.decoded("dlq") if d["reason"] == "poll_expired"]


def test_a_reconciler_sigkilled_mid_poll_three_times_polls_each_expectation_to_one_result(
    make_pipeline: Callable[..., Pipeline], api: tuple[ProviderApi, str], note: Callable[[str], None]
) -> None:
    fake, api_url = api
    pipeline = make_pipeline()
    reconciler = _reconciled(pipeline, api_url)
    pipeline.start()
    batches = [[f"acct-{n}-{uuid.uuid4().hex[:8]}" for _ in range(3)] for n in range(3)]
    given_up = f"proc-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()

    def kill_mid_poll(what: str) -> None:
        wait_until(lambda: fake.held, 60, f"a poll held by the API ({what})")
        assert reconciler.alive(), reconciler.tail()
        assert reconciler.stop(signal.SIGKILL, timeout=10) == -signal.SIGKILL
        fake.release()

    try:
        # 1: a first batch polled to its result; a second one polled and killed before any answer.
        reconciler.start()
        for vid in batches[0]:
            _expect(pipeline, "xendit", vid)
        wait_until(lambda: _approved(pipeline, batches[0]), 60, "the first batch approved from its polls")
        fake.hold()
        for vid in batches[1]:
            _expect(pipeline, "xendit", vid)
        wait_until(lambda: fake.held, 60, "a poll of the second batch held by the API")
        # Expected while the reconciler is blocked in that tick: due to be given up on at its restart.
        _expect(pipeline, "signicat", given_up, {"dossierId": "dossier-1"})
        expected_by = time.time()
        kill_mid_poll("second batch")

        # 2: the restart gives up on the Signicat process, then polls the second batch, held: killed
        # with the dead letter in Kafka and the tick that wrote it not finished.
        wait_until(lambda: time.time() > expected_by + GIVE_UP_AFTER_S, 10, "the Signicat expectation overdue")
        fake.hold()
        reconciler.start()
        wait_until(lambda: _given_up(pipeline), 60, "the poll_expired dead letter in Kafka")
        kill_mid_poll("second batch again, after the dead letter")

        # 3: the second batch polled to its result; a third batch polled and killed.
        reconciler.start()
        wait_until(lambda: _approved(pipeline, batches[1]), 60, "the second batch approved")
        fake.hold()
        for vid in batches[2]:
            _expect(pipeline, "xendit", vid)
        kill_mid_poll("third batch")

        # 4: everything finished: approved, and every expectation tombstoned (nothing left to poll).
        reconciler.start()
        keys = [f"xendit:{vid}" for batch in batches for vid in batch] + [f"signicat:{given_up}"]
        wait_until(lambda: _approved(pipeline, batches[2]), 60, "the third batch approved")
        wait_until(lambda: _tombstoned(pipeline, keys), 60, "every expectation tombstoned")
        assert reconciler.stop(signal.SIGTERM, timeout=40) == 0, reconciler.tail()
    finally:
        if reconciler.alive():
            reconciler.send(signal.SIGKILL)
        if reconciler.unreaped():
            reconciler.wait(10)
    wait_until(lambda: committed_to_end(pipeline.kafka, pipeline.group, pipeline.topics.raw), 60, "raw processed")

    vids = [vid for batch in batches for vid in batch]
    events = pipeline.decoded("events")
    assert Counter(e["verification_id"] for e in events) == dict.fromkeys(vids, 1), events
    assert {e["status"] for e in events} == {"APPROVED"}
    answers = pipeline.decoded("raw")
    assert {a["origin"] for a in answers} == {"poll"}
    letters = pipeline.decoded("dlq")
    assert [(d["reason"], d["_key"]) for d in letters] == [("poll_expired", f"signicat:{given_up}".encode())], letters
    assert fake.polls[given_up] == 0, "given up on at its first tick, before any poll"
    note(
        f"{reconciler.generation} reconciler runs, 3 SIGKILLs mid-poll, {time.monotonic() - started:.1f}s; "
        f"{len(vids)} expectations, {sum(fake.polls[v] for v in vids)} polls, {len(answers)} polled answers "
        f"in the raw topic, {len(events)} events; dead letters {Counter(d['reason'] for d in letters)}"
    )
