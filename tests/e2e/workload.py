"""Provider-like traffic: what the five providers send, signed as they sign it, retried as they retry.

`build_workload` makes a seeded stream of deliveries (each verification's callbacks from in-progress to
its decision, some bad bodies, about 10% repeated deliveries) whose outcome is known in advance:
the events (one per provider result), the final state of each verification and the dead letters.
`LoadGenerator` sends it at a fixed rate to 127.0.0.1, retrying 503s, 429s and connection errors with
backoff (or after the answer's Retry-After) until 200, as a provider would, and records every attempt.
`verify` checks the topics against the expectation.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from processors.model import RawDelivery, Rejection, VerificationEvent
from processors.pipeline import normalize
from tests.conftest import dev_sources, wait_until
from tests.credentials import auth_headers

RETRIED = {429, 500, 502, 503, 504}  # what a provider retries; anything else is final
_DEV_SOURCES = dev_sources()  # one per provider, named after it, as in deploy/kycstream.dev.yaml


def sign(provider: str, body: bytes) -> dict[str, str]:
    """The auth headers each provider sends with the dev config (see deploy/kycstream.dev.yaml)."""
    return auth_headers(_DEV_SOURCES[provider], body)


@dataclass
class Delivery:
    """One provider callback (a repeat is a separate Delivery with the same body and headers)."""

    slot: int
    provider: str
    body: bytes
    headers: dict[str, str]  # provider headers + auth (what goes on the wire)
    method: str = "POST"
    key: str | None = None  # provider:verification_id, for good ones
    status: str | None = None  # the event status it must produce
    idempotency_key: str | None = None
    dead_letter: str | None = None  # the DLQ reason it must produce
    repeat_of: int | None = None


@dataclass
class Workload:
    deliveries: list[Delivery]
    final: dict[str, str]  # provider:verification_id -> final status
    event_counts: dict[str, int]  # provider:verification_id -> distinct results


def _ts(base: datetime, seconds: int) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verification(provider: str, vid: str, rng: random.Random, base: datetime) -> list[tuple[dict[str, Any], str]]:
    """A verification's callbacks in the order the provider sends them: (body, expected status).

    Each ends in exactly one decision or review, so the final state is the same in any arrival order
    (a decision is never replaced by an in-progress status, and no two decisions compete).
    """
    if provider == "esign":
        status, result, reason, final = rng.choice(
            [
                ("COMPLETED", "VALID", None, "APPROVED"),
                ("COMPLETED", "INVALID", "DUKCAPIL_REJECTED", "REJECTED"),
                ("COMPLETED", "INVALID", "EMAIL_HAS_BEEN_USED", "RESUBMISSION_REQUIRED"),
            ]
        )
        common = {"submissionId": vid, "userId": f"user-{vid[-6:]}", "partnerSessionId": f"ps-{vid[-6:]}"}
        decided = {**common, "status": status, "result": result, "processedAt": _ts(base, 60)}
        if reason:
            decided["reasonCode"] = reason
        return [
            ({**common, "status": "PARTIALLY_COMPLETED", "result": "VALID", "processedAt": _ts(base, 0)}, "PENDING"),
            (decided, final),
        ]
    if provider == "signicat":
        word, final = rng.choice([("accepted", "APPROVED"), ("rejected", "REJECTED"), ("inconclusive", "REVIEW")])
        dossier = f"d-{vid}"
        return [
            ({"dossierId": dossier, "processId": vid, "status": rng.choice(["pending", "processing"])}, "PENDING"),
            ({"dossierId": dossier, "processId": vid, "status": word}, final),
        ]
    if provider == "incode":
        common = {"interviewId": vid, "clientId": "acmebank", "flowId": "64f1b2c3d4e5f6a7b8c9d0e1"}
        last: tuple[dict[str, Any], str] = rng.choice(
            [
                ({**common, "onboardingStatus": "MANUAL_REVIEW_APPROVED"}, "APPROVED"),
                ({**common, "onboardingStatus": "MANUAL_REVIEW_REJECTED"}, "REJECTED"),
                ({**common, "event": "Session Pending Review"}, "REVIEW"),
            ]
        )
        return [
            ({**common, "onboardingStatus": "ID_VALIDATION_FINISHED", "externalId": f"c-{vid[-6:]}"}, "PENDING"),
            ({**common, "onboardingStatus": "ONBOARDING_FINISHED"}, "PENDING"),
            last,
        ]
    if provider == "metamap":
        resource = f"https://api.getmati.com/v2/verifications/{vid}"
        identity, final = rng.choice([("verified", "APPROVED"), ("rejected", "REJECTED"), ("reviewNeeded", "REVIEW")])
        return [
            ({"eventName": "verification_started", "resource": resource, "timestamp": _ts(base, 0)}, "PENDING"),
            (
                {
                    "eventName": "step_completed",
                    "resource": resource,
                    "timestamp": _ts(base, 20),
                    "step": {"status": 200, "id": "facematch", "data": {"score": rng.randint(60, 100)}, "error": None},
                },
                "PENDING",
            ),
            (
                {
                    "eventName": "verification_completed",
                    "resource": resource,
                    "timestamp": _ts(base, 40),
                    "identityStatus": identity,
                },
                final,
            ),
        ]
    if provider == "xendit":
        word, final = rng.choice(
            [("PASSED", "APPROVED"), ("FAILED", "REJECTED"), ("RESUBMISSION_REQUIRED", "RESUBMISSION_REQUIRED")]
        )
        when = _ts(base, 0)
        body = {
            "event": "account.verification",
            "created": when,
            "business_id": "5fe2b0137b7d62542fe6d7de",
            "data": {"id": vid, "created": when, "updated": when, "kyc": {"status": word}},
        }
        return [(body, final)]
    raise ValueError(provider)


PROVIDERS = ("esign", "signicat", "incode", "metamap", "xendit")

# Bodies no provider result can be read from: each must land in the DLQ with this reason.
_BAD: list[tuple[str, str, str]] = [
    ("metamap", '{"eventName": "step_completed", "step": {"status": NumberInt(200)}}', "invalid_json"),
    ("xendit", '{"event": "payment.succeeded", "data": {"id": "py-{n}"}}', "unrecognized_event"),
    ("esign", '{"submissionId": "bad-{n}", "status": "TELEPORTED", "result": "VALID"}', "unknown_status"),
    ("signicat", '{"dossierId": "d-bad-{n}", "status": "accepted"}', "missing_verification_id"),
    ("incode", '["interviewId", "bad-{n}"]', "not_an_object"),
]


def build_workload(total: int, seed: int, *, repeat_share: float = 0.10, bad_share: float = 0.05) -> Workload:
    """About `total` deliveries: `repeat_share` of them repeats of earlier ones, `bad_share` dead letters."""
    rng = random.Random(seed)
    base = datetime(2026, 5, 8, 10, 0, tzinfo=UTC)
    run = f"{seed}-{rng.getrandbits(32):08x}"
    unique_target = round(total * (1 - repeat_share))
    pending: list[list[Delivery]] = []  # per verification, the callbacks not yet placed
    final: dict[str, str] = {}
    counts: dict[str, int] = {}
    made = 0
    n = 0
    while made < unique_target * (1 - bad_share):
        provider = PROVIDERS[n % len(PROVIDERS)]
        vid = f"{run}-{provider[:2]}-{n:06d}"
        if provider == "metamap":
            vid = f"{rng.getrandbits(96):024x}"  # MetaMap ids are 24 hex digits
        steps = _verification(provider, vid, rng, base + timedelta(minutes=n))
        chain: list[Delivery] = []
        for body, status in steps:
            raw = orjson.dumps(body)
            headers = {"content-type": "application/json"}
            if provider == "xendit":
                headers["webhook-id"] = f"wh-{vid}-{len(chain)}"
            method = rng.choice(["POST", "PUT", "PATCH"]) if provider == "esign" else "POST"
            chain.append(
                Delivery(-1, provider, raw, {**headers, **sign(provider, raw)}, method, f"{provider}:{vid}", status)
            )
        final[f"{provider}:{vid}"] = steps[-1][1]
        counts[f"{provider}:{vid}"] = len(steps)
        pending.append(chain)
        made += len(chain)
        n += 1
    stream: list[Delivery] = []
    bad_every = max(1, round(1 / bad_share)) if bad_share else 0
    while pending:  # interleave verifications, each in its own order
        chain = pending[rng.randrange(min(len(pending), 25))]
        stream.append(chain.pop(0))
        if not chain:
            pending.remove(chain)
        if bad_every and len(stream) % bad_every == 0:
            provider, template, reason = _BAD[len(stream) // bad_every % len(_BAD)]
            raw = template.replace("{n}", str(len(stream))).encode()
            headers = {"content-type": "application/json", **sign(provider, raw)}
            stream.append(Delivery(-1, provider, raw, headers, dead_letter=reason))
    deliveries: list[Delivery] = []
    repeats = round(len(stream) * repeat_share / (1 - repeat_share))  # repeat_share of all deliveries
    repeat_after = set(rng.sample(range(len(stream)), min(repeats, len(stream))))
    for i, delivery in enumerate(stream):
        delivery.slot = len(deliveries)
        deliveries.append(delivery)
        if i in repeat_after:  # a provider delivering a recent callback again
            original = deliveries[rng.randrange(max(0, len(deliveries) - 50), len(deliveries))]
            deliveries.append(
                Delivery(
                    len(deliveries),
                    original.provider,
                    original.body,
                    dict(original.headers),
                    original.method,
                    original.key,
                    original.status,
                    dead_letter=original.dead_letter,
                    repeat_of=original.slot,
                )
            )
    for d in deliveries:  # the workload's own consistency: what the pure normalizer says it should be
        outcome = normalize(
            RawDelivery("check", d.provider, d.provider, d.method, datetime.now(UTC), d.body, _kept_headers(d))
        )
        if d.dead_letter:
            assert isinstance(outcome, Rejection) and outcome.code == d.dead_letter, (d, outcome)
        else:
            assert isinstance(outcome, VerificationEvent), (d, outcome)
            assert outcome.status.value == d.status and outcome.key == d.key, (d, outcome)
            d.idempotency_key = outcome.idempotency_key
    return Workload(deliveries, final, counts)


def _kept_headers(d: Delivery) -> dict[str, str]:
    return {k: v for k, v in d.headers.items() if k not in ("authorization", "x-callback-token", "x-signature")}


# --- sending -------------------------------------------------------------------------------------


@dataclass
class Attempt:
    slot: int
    started: float  # time.monotonic() when the request went on the wire (connect, or headers on a kept-alive one)
    ended: float  # ... and when its answer (or error) came back
    status: int | None  # None: no HTTP answer (connection refused/reset, timeout)
    error: str | None = None
    request_id: str | None = None
    body: bytes = b""


@dataclass
class LoadGenerator:
    """Fixed-rate sender to one gateway URL; each delivery retried until 200 or `give_up_s` from start."""

    url: str
    deliveries: list[Delivery]
    rate: float  # deliveries started per second
    give_up_s: float  # hard bound from the start: after it, nothing is retried
    max_backoff_s: float = 2.0
    timeout_s: float = 15.0
    connections: int = 256
    attempts: list[Attempt] = field(default_factory=list)
    accepted: dict[int, str] = field(default_factory=dict)  # slot -> request_id of its 200
    started_at: float = 0.0
    lag: list[tuple[float, float]] = field(default_factory=list)  # (when, how late) the client's own loop ran
    sent: int = 0  # deliveries started
    in_flight: int = 0  # requests on the wire now (sent, not yet answered)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None
    _stopped: bool = False

    def start(self) -> LoadGenerator:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def join(self) -> LoadGenerator:
        assert self._thread is not None
        self._thread.join(self.give_up_s + self.timeout_s + 30)
        assert not self._thread.is_alive(), "the load generator did not stop"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Start nothing new and retry nothing more (the test has seen enough)."""
        self._stopped = True

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._error = exc

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
        async with httpx.AsyncClient(limits=limits, timeout=self.timeout_s) as client:
            monitor = asyncio.create_task(self._watch_lag())
            tasks = []
            for i, delivery in enumerate(self.deliveries):
                if (wait := self.started_at + i / self.rate - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # sleep: pacing (the fixed rate)
                if self._stopped:
                    break
                tasks.append(asyncio.create_task(self._deliver(client, delivery)))
                self.sent += 1
            await asyncio.gather(*tasks)
            monitor.cancel()

    async def _watch_lag(self) -> None:
        """How late this loop runs a 50 ms timer: time the client itself adds to measured answers."""
        while True:
            due = time.monotonic() + 0.05
            await asyncio.sleep(0.05)  # sleep: pacing (the 50 ms timer whose lateness is measured)
            if (late := time.monotonic() - due) > 0.1:
                self.lag.append((due, late))

    async def _deliver(self, client: httpx.AsyncClient, d: Delivery) -> None:
        backoff = 0.25
        url = f"{self.url}/webhooks/{d.provider}"
        while True:
            wire: list[float] = []  # not the time spent waiting for one of the client's own connections

            async def trace(event: str, info: dict[str, Any], wire: list[float] = wire) -> None:
                if not wire and event in ("connection.connect_tcp.started", "http11.send_request_headers.started"):
                    wire.append(time.monotonic())

            queued = time.monotonic()
            self.in_flight += 1  # one event loop: no lock needed
            try:
                response = await client.request(
                    d.method, url, content=d.body, headers=d.headers, extensions={"trace": trace}
                )
            except httpx.TransportError as exc:
                started = wire[0] if wire else queued
                self.attempts.append(Attempt(d.slot, started, time.monotonic(), None, type(exc).__name__))
            else:
                started = wire[0] if wire else queued
                self.attempts.append(
                    Attempt(
                        d.slot,
                        started,
                        time.monotonic(),
                        response.status_code,
                        request_id=response.headers.get("x-request-id"),
                        body=response.content,
                    )
                )
                if response.status_code == 200:
                    self.accepted[d.slot] = response.json()["request_id"]
                    return
                if response.status_code not in RETRIED:
                    return  # a refusal a provider would not retry: verify() reports it
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():  # the gateway says when (503 kafka_unavailable, 429)
                    backoff = max(backoff, float(retry_after))
            finally:
                self.in_flight -= 1
            if self._stopped or time.monotonic() - self.started_at + backoff > self.give_up_s:
                return
            await asyncio.sleep(backoff)  # sleep: pacing (a provider's retry backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def statuses(self) -> Counter[str]:
        return Counter(str(a.status) if a.status is not None else a.error or "?" for a in self.attempts)


# --- checking the outcome ---------------------------------------------------------------------


def wait_for_outputs(pipeline: Any, workload: Workload, gen: LoadGenerator, timeout: float = 120) -> None:
    """Until every expected event and dead letter is in its topic; fails naming what is missing."""
    want_keys = {workload.deliveries[s].idempotency_key for s in gen.accepted} - {None}
    want_dead = {rid for s, rid in gen.accepted.items() if workload.deliveries[s].dead_letter}
    missing: tuple[set[Any], set[str]] = (want_keys, want_dead)

    def complete() -> bool:
        nonlocal missing
        keys = {e["idempotency_key"] for e in pipeline.decoded("events")}
        dead = {d["request_id"] for d in pipeline.decoded("dlq")}
        missing = (want_keys - keys, want_dead - dead)
        return not any(missing)

    wait_until(
        complete,
        timeout,
        lambda: (
            f"every accepted delivery's output: {len(missing[0])} events missing (e.g. {sorted(missing[0])[:3]}), "
            f"{len(missing[1])} dead letters missing (e.g. {sorted(missing[1])[:3]})"
        ),
        every=1.0,
    )


def verify(pipeline: Any, workload: Workload, gen: LoadGenerator) -> dict[str, Any]:
    """Every promise about the accepted deliveries, checked on the decoded topics. Returns a summary."""
    deliveries = workload.deliveries
    problems: list[str] = []

    unaccepted = [d.slot for d in deliveries if d.slot not in gen.accepted]
    final_refusals = [a for a in gen.attempts if a.status is not None and a.status != 200 and a.status not in RETRIED]
    if final_refusals:
        problems.append(f"{len(final_refusals)} refused for good, e.g. {final_refusals[0]}")
    if unaccepted:
        problems.append(f"{len(unaccepted)} deliveries never got a 200 (e.g. slots {unaccepted[:5]})")

    # 1. every 200 has its raw record, with the bytes that were sent
    raw = {r["request_id"]: r for r in pipeline.decoded("raw")}
    missing_raw = [(s, rid) for s, rid in gen.accepted.items() if rid not in raw]
    if missing_raw:
        problems.append(f"{len(missing_raw)} deliveries answered 200 have no raw record: {missing_raw[:5]}")
    for slot, rid in gen.accepted.items():
        if rid in raw:
            record, d = raw[rid], deliveries[slot]
            if (record["body"], record["provider"], record["method"]) != (d.body, d.provider, d.method):
                problems.append(f"raw record {rid} differs from delivery {slot}")
                break

    # 2. events: one per distinct provider result among the accepted deliveries, none twice
    events = pipeline.decoded("events")
    ids = Counter(e["event_id"] for e in events)
    doubled = {i: n for i, n in ids.items() if n > 1}
    if doubled:
        problems.append(f"{len(doubled)} event ids written more than once: {list(doubled.items())[:3]}")
    expected_keys = {k for s in gen.accepted if (k := deliveries[s].idempotency_key)}
    got_keys = Counter(e["idempotency_key"] for e in events)
    if missing := expected_keys - set(got_keys):
        problems.append(f"{len(missing)} events missing, e.g. {sorted(missing)[:3]}")
    if extra := set(got_keys) - expected_keys:
        problems.append(f"{len(extra)} unexpected events, e.g. {sorted(extra)[:3]}")
    if twice := [k for k, n in got_keys.items() if n > 1]:
        problems.append(f"{len(twice)} provider results with more than one event, e.g. {twice[:3]}")
    by_key = {d.idempotency_key: d for d in deliveries if d.idempotency_key}
    wrong = [e for e in events if e["idempotency_key"] in by_key and e["status"] != by_key[e["idempotency_key"]].status]
    if wrong:
        problems.append(f"{len(wrong)} events with the wrong status, e.g. {wrong[0]['idempotency_key']}")
    unsourced = [e for e in events if (e.get("raw_ref") or {}).get("request_id") not in raw]
    if unsourced:
        problems.append(f"{len(unsourced)} events whose raw_ref is not a raw record")

    # 3. state: the final status of every verification, counting each result once
    states = pipeline.latest_states()
    accepted_keys = {k for s in gen.accepted if (k := deliveries[s].key)}
    for key in sorted(accepted_keys):
        want_count = len({d.idempotency_key for d in deliveries if d.key == key and d.slot in gen.accepted})
        # Only verifications whose every callback got through have a known final status.
        complete = want_count == workload.event_counts[key]
        state = states.get(key)
        if state is None:
            problems.append(f"no state for {key}")
        elif complete and state["status"] != workload.final[key]:
            problems.append(f"state of {key} is {state['status']}, expected {workload.final[key]}")
        elif state["event_count"] != want_count:
            problems.append(f"state of {key} counts {state['event_count']} events, expected {want_count}")
    if extra_states := set(states) - accepted_keys:
        problems.append(f"{len(extra_states)} unexpected state keys, e.g. {sorted(extra_states)[:3]}")

    # 4. DLQ: every accepted bad delivery, with its reason and its original bytes; nothing else
    letters = {d["request_id"]: d for d in pipeline.decoded("dlq")}
    want_dead = {rid: deliveries[s] for s, rid in gen.accepted.items() if deliveries[s].dead_letter}
    for rid, d in want_dead.items():
        letter = letters.get(rid)
        if letter is None:
            problems.append(f"no dead letter for request {rid} ({d.provider} {d.dead_letter})")
        elif letter["reason"] != d.dead_letter or not letter["detail"]:
            problems.append(f"dead letter {rid}: {letter['reason']!r}, expected {d.dead_letter!r}")
        elif pipeline.codec.decode("RawDelivery", letter["original_value"])["body"] != d.body:
            problems.append(f"dead letter {rid} does not keep the delivery's body")
    accepted_rids = set(gen.accepted.values())
    stray = [rid for rid in letters if rid in accepted_rids and rid not in want_dead]
    if stray:
        problems.append(f"{len(stray)} good deliveries dead-lettered, e.g. {stray[:3]}")

    summary = {
        "deliveries": len(deliveries),
        "repeats": sum(d.repeat_of is not None for d in deliveries),
        "attempts": len(gen.attempts),
        "statuses": dict(gen.statuses()),
        "raw_records": len(raw),
        "events": len(events),
        "states": len(states),
        "dead_letters": len(letters),
    }
    assert not problems, "\n".join([*problems[:30], f"summary: {summary}"])
    return summary
