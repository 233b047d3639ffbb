"""The webhook endpoint: refuse early and cheaply, persist to Kafka, answer only after the ack."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from gateway import clientip, errors
from gateway.auth import AcceptedCredentials
from gateway.errors import (
    Forbidden,
    GatewayError,
    KafkaUnavailable,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SpoolFailed,
    UnknownSource,
)
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings, SourceSettings
from gateway.spool.journal import Spool, Spooled
from processors import logs, tracing
from processors.errors import BrokerError, RecordTooLarge
from processors.kafka.producer import Delivered
from processors.model import ROUTE_HEADER, Expectation, RawDelivery
from processors.pipeline import raised_at, routing_id, uuid_text
from processors.providers import REGISTRY
from processors.reconcile.ratelimit import TokenBucket
from processors.secretfile import SecretFile

log = logs.get("kycstream.gateway")
# The 200 body, exactly as JSONResponse renders {"status": "accepted", "request_id": ...}.
_ACCEPTED = ('{"status":"accepted","request_id":"', '"}')
# Headers kept in the raw envelope for every source, besides those its provider reads.
_KEPT_HEADERS = ("content-type", "user-agent", "x-request-id")
_INTERNAL_ERROR = (
    b'{"error":"internal_error","detail":"the gateway failed; the delivery was not accepted, retry later"}'
)


class RawSink(Protocol):
    topic: str

    def envelope(self, delivery: RawDelivery) -> tuple[bytes, list[tuple[str, bytes]]]: ...

    def largest_body(self, source: str, provider: str) -> int: ...

    def check(self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None: ...

    async def write(self, delivery: RawDelivery, key: str) -> Delivered: ...

    async def write_expectation(self, expectation: Expectation) -> Delivered: ...

    async def not_ready(self) -> str | None: ...


@dataclass(frozen=True)
class Source:
    name: str
    provider: str
    methods: frozenset[str]
    authenticator: AcceptedCredentials
    allow: tuple[clientip.Network, ...]
    max_body_bytes: int
    kept_headers: tuple[str, ...]
    bucket: TokenBucket | None
    spools: bool
    unavailable_status: int
    routes: frozenset[str] = frozenset()  # sub-paths the provider's webhooks may arrive on
    limit_reason: str = "sources.<name>.max_body_bytes or gateway.max_body_bytes"

    @classmethod
    def build(cls, name: str, s: SourceSettings, default_max_body: int) -> Source:
        assert s.methods is not None
        return cls(
            name=name,
            provider=s.provider,
            methods=frozenset(s.methods),
            authenticator=AcceptedCredentials(
                s.declared_auth,
                tuple(c.get_secret_value().encode() for c in s.auth.credentials if c.get_secret_value()),
                SecretFile(s.auth.credentials_file) if s.auth.credentials_file is not None else None,
            ),
            allow=clientip.networks(s.allow_ips),
            max_body_bytes=s.max_body_bytes or default_max_body,
            kept_headers=tuple(dict.fromkeys((*_KEPT_HEADERS, *REGISTRY[s.provider].HEADERS))),
            bucket=TokenBucket(s.rate_limit.per_second, s.rate_limit.burst) if s.rate_limit else None,
            spools=s.on_kafka_unavailable == "spool",
            unavailable_status=s.unavailable_status or 503,
            routes=frozenset(getattr(REGISTRY[s.provider], "ROUTES", ())),
        )


class WebhookEndpoint:
    """`/webhooks/{source}` as a plain ASGI app, dispatched to by gateway.app before Starlette.

    The hot path of the product: no Request/Response objects, no middleware, no routing table
    (together ~15% of the event loop per webhook under load). Refusals answer as errors.body renders them.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        sink: RawSink,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime],
        spool: Spool | None = None,
    ) -> None:
        server = settings.gateway
        self.spool = spool
        self.spool_after_s = min(server.spool.after_s, server.produce_timeout_s)
        self.sources = {
            n: _fitted(Source.build(n, s, server.max_body_bytes), sink) for n, s in settings.sources.items()
        }
        self.trusted = clientip.networks(server.trusted_proxies)
        self.retry_after = str(server.retry_after_s)
        self.sink = sink
        self.metrics = metrics
        # Requests awaiting Kafka: a plain count on the event loop, read when /metrics is scraped
        # (a Gauge's inc() and dec() take a lock each, per request).
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)
        self.clock = clock
        self._requests: dict[tuple[str, int], Any] = {}  # requests_total children by (source, status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """`path`: what follows /webhooks/, the source's name and, for a provider that sends each kind
        of webhook to its own URL (its ROUTES), `/` and the kind."""
        request_id = _request_id()
        if not tracing.ENABLED:
            await self._answer(scope, receive, send, path, request_id)
            return
        with tracing.webhook(scope["method"], scope["headers"], request_id) as span:
            label, status = await self._answer(scope, receive, send, path, request_id)
            tracing.answered(span, label, status)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, path: str, request_id: str) -> tuple[str, int]:
        started = time.perf_counter()
        name, _, route = path.partition("/")
        try:
            status, body, headers = await self._receive(scope, receive, name, route, request_id)
        except GatewayError as exc:
            status, body, headers = exc.status, errors.body(exc, request_id), exc.headers
        except ClientDisconnect:
            status, body, headers = 499, b"", {}  # nobody to answer; counted and logged as 499
        except Exception as exc:  # a bug: answer 500 (nothing was accepted) and say where, not what
            log.error(
                "webhook_failed",
                source=name if name in self.sources else "_unknown",
                request_id=request_id,
                error=type(exc).__name__,
                at=raised_at(exc),
            )
            status, body, headers = 500, _INTERNAL_ERROR, {}
        if status != 499:
            raw = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ]
            if headers:
                raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})

        label = name if name in self.sources else "_unknown"
        counter = self._requests.get((label, status))
        if counter is None:
            counter = self._requests[(label, status)] = self.metrics.requests.labels(label, str(status))
        counter.inc()
        # Accepted deliveries are counted in requests_total and logged at DEBUG only: a line per
        # 200 cost ~12% of the event loop under load. Refusals are what a person reads the log for.
        if status < 400 and not logs.DEBUG:  # not even its fields: 7% of the path's instructions
            return label, status
        emit = log.debug if status < 400 else log.info if status < 500 else log.warning
        emit(
            "webhook",
            source=label,
            method=scope["method"],
            status=status,
            request_id=request_id,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return label, status

    def _unroutable(self, name: str, request_id: str, exc: Exception) -> None:
        """Keyed by request id instead of its verification: accepted, but out of order with its siblings."""
        self.metrics.unroutable.labels(name).inc()
        log.warning(
            "webhook_unroutable", source=name, request_id=request_id, error=type(exc).__name__, at=raised_at(exc)
        )

    async def _receive(
        self, scope: Scope, receive: Receive, name: str, route: str, request_id: str
    ) -> tuple[int, bytes, dict[str, str]]:
        source = self.sources.get(name)
        if source is None:
            raise UnknownSource(f"no webhook source named {name!r} is configured")
        if route and route not in source.routes:
            known = ", ".join(f"/webhooks/{name}/{r}" for r in sorted(source.routes)) or f"only /webhooks/{name}"
            raise NotFound(f"source {name!r} has no route {route[:64]!r}: its provider's webhooks come to {known}")
        method = scope["method"]
        if method not in source.methods:
            allow = ", ".join(sorted(source.methods))
            raise MethodNotAllowed(f"source {name!r} accepts {allow}", {"allow": allow})
        client = scope.get("client")
        # One dict of the headers (the first of repeated ones, as Starlette's Headers.get answers)
        # instead of a scan of the raw list per lookup.
        hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        address = clientip.client_ip(client[0] if client else None, hdrs.get("x-forwarded-for"), self.trusted)
        if not clientip.allowed(address, source.allow):
            raise Forbidden(f"this address may not deliver to source {name!r}")
        if source.bucket is not None and (wait := source.bucket.take()) > 0:
            seconds = str(max(1, int(wait + 0.999)))
            raise RateLimited(f"source {name!r} is over its rate limit; retry later", {"retry-after": seconds})
        body = await read_body(receive, source.max_body_bytes, hdrs.get("content-length"), source.limit_reason)
        source.authenticator.check(hdrs, body)

        headers = {h: v for h in source.kept_headers if (v := hdrs.get(h)) is not None}
        if route:
            headers[ROUTE_HEADER] = route  # which of the provider's URLs it came to: its kind
        delivery = RawDelivery(
            request_id=request_id,
            source=name,
            provider=source.provider,
            method=method,
            received_at=self.clock(),
            body=body,
            headers=headers,
            remote_addr=address,
            content_type=hdrs.get("content-type"),
        )
        key = routing_id(source.provider, body, lambda exc: self._unroutable(name, request_id, exc)) or request_id
        if source.spools and self.spool is not None and self.spool.records:
            # Order per verification (gateway/spool/journal.py): a delivery whose key has a record in the spool
            # queues behind it; the others go straight to Kafka while the forwarder drains, unless the
            # forwarder just found Kafka away (then waiting spool_after_s for a timeout helps nobody).
            if self.spool.holds(key.encode()):
                return await self._spool(source, delivery, key, "its verification has records in the spool")
            if self.spool.kafka_away:
                return await self._spool(source, delivery, key, "the spool forwarder cannot reach Kafka")
        self.in_flight += 1
        started = time.perf_counter()
        try:
            if source.spools and self.spool is not None:
                # Not the whole produce deadline: a record that lands after all is a repeat dedup absorbs.
                await asyncio.wait_for(self.sink.write(delivery, key), self.spool_after_s)
            else:
                await self.sink.write(delivery, key)
        except RecordTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from exc
        except (BrokerError, TimeoutError) as exc:
            if source.spools and self.spool is not None:
                why = str(exc) or f"Kafka did not acknowledge within {self.spool_after_s:g}s"
                return await self._spool(source, delivery, key, why)
            assert isinstance(exc, BrokerError)
            raise KafkaUnavailable(
                f"{exc}; the delivery was not accepted, retry later",
                {"retry-after": self.retry_after},
                source.unavailable_status,
            ) from exc
        finally:
            self.in_flight -= 1
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        return 200, request_id.join(_ACCEPTED).encode(), {}

    async def _spool(
        self, source: Source, delivery: RawDelivery, key: str, why: str
    ) -> tuple[int, bytes, dict[str, str]]:
        """200 once the exact raw record is fsynced in the local spool; the refusal when it is full."""
        assert self.spool is not None
        full = self.spool.full()
        if full is not None:
            raise KafkaUnavailable(
                f"Kafka is unavailable ({why}) and {full}; the delivery was not accepted, retry later",
                {"retry-after": self.retry_after},
                source.unavailable_status,
            )
        value, headers = self.sink.envelope(delivery)
        try:
            self.sink.check(key.encode(), value, headers)  # never spool what can never be forwarded
        except RecordTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from exc
        try:
            await asyncio.to_thread(self.spool.append, Spooled(key.encode(), value, tuple(headers), time.time()))
        except OSError as exc:
            log.error("spool_write_failed", source=source.name, request_id=delivery.request_id, error=str(exc))
            raise SpoolFailed(
                f"Kafka is unavailable ({why}) and the spool could not be written; the delivery was not "
                "accepted, retry later",
                {"retry-after": self.retry_after},
                source.unavailable_status,
            ) from exc
        self.metrics.spooled.labels(source.name).inc()
        return 200, orjson.dumps({"status": "accepted", "request_id": delivery.request_id, "spooled": True}), {}


def _fitted(source: Source, sink: RawSink) -> Source:
    """The source with its body limit lowered to what a raw record can hold, when that is less."""
    largest = sink.largest_body(source.name, source.provider)
    if largest >= source.max_body_bytes:
        return source
    reason = "the largest body a Kafka record holds with this source's envelope (kafka message.max.bytes)"
    return dataclasses.replace(source, max_body_bytes=largest, limit_reason=reason)


_random = bytearray()  # random bytes not used yet; a forked child starts with none of its parent's
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_random", bytearray()))


def _request_id() -> str:
    """str(uuid.uuid4()), from os.urandom 4 KiB at a time: one syscall per 256 ids, no UUID object."""
    global _random
    if len(_random) < 16:
        _random = bytearray(os.urandom(4096))
    b = _random[-16:]
    del _random[-16:]
    return uuid_text(b, 4)


async def read_body(receive: Receive, limit: int, declared: str | None, reason: str = "") -> bytes:
    """The request body from the ASGI `receive`, refused (413) past `limit` bytes, declared or sent."""
    why = f" ({reason})" if reason else ""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes{why}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes{why}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
