"""The gateway's ASGI app: webhooks in, raw records out, plus health, readiness and metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import errors, openapi
from gateway.expectations import ExpectationsEndpoint
from gateway.metrics import GatewayMetrics
from gateway.routes import RawSink, WebhookEndpoint
from gateway.settings import GatewaySettings
from gateway.spool.journal import Spool

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(
    settings: GatewaySettings,
    sink: RawSink,
    *,
    on_shutdown: Callable[[], object] | None = None,
    clock: Callable[[], datetime] | None = None,
    spool: Spool | None = None,
    metrics: GatewayMetrics | None = None,
    forwarding: Callable[[], bool] | None = None,
) -> Gateway:
    """`forwarding` says whether the spool's forwarder runs (a spool nobody forwards is not ready)."""
    metrics = metrics or GatewayMetrics()
    clock = clock or partial(datetime.now, UTC)  # no Python frame of its own, per request
    webhook = WebhookEndpoint(settings, sink, metrics, clock, spool)
    if spool is not None:
        metrics.watch(spool)
    expectations = ExpectationsEndpoint(settings, sink, clock)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if forwarding is not None and not forwarding():
            detail = "the spool forwarder is not running: spooled deliveries would never reach Kafka"
            return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)
        reason = await sink.not_ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        if spool is not None and (full := spool.full()) is None:  # accepting: into the spool
            spooling = settings.spooling
            return JSONResponse({"status": "ready", "spooling": spooling, "detail": reason})
        detail = reason if spool is None else f"{reason}; {full}"
        return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)

    spec = openapi.dump(openapi.document(version("kycstream"))).encode()

    async def openapi_endpoint(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return errors.response(errors.from_http(exc))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    rest = Starlette(
        routes=[
            Route("/expectations/{source}", expectations.handle, methods=_ALL_METHODS),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    return Gateway(webhook, rest)


_PREFIX = "/webhooks/"


class Gateway:
    """`/webhooks/{source}[/{route}]` straight to the webhook endpoint; everything else (health, readiness,
    metrics, expectations, 404s, lifespan) through Starlette."""

    def __init__(self, webhook: WebhookEndpoint, rest: Starlette) -> None:
        self.webhook = webhook
        self.rest = rest

    @property
    def paths(self) -> set[str]:
        """Every path served, in Starlette's route syntax."""
        return {_PREFIX + "{source}", _PREFIX + "{source}/{route}", *(getattr(r, "path", "") for r in self.rest.routes)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            tail = path[len(_PREFIX) :]
            if path.startswith(_PREFIX) and tail and tail.count("/") <= 1 and not tail.startswith("/"):
                await self.webhook(scope, receive, send, tail)  # {source} or {source}/{route}
                return
        await self.rest(scope, receive, send)
