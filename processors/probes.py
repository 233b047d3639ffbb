"""Liveness and readiness of a role's main loop, served beside its Prometheus metrics.

Liveness is the loop's own progress: the loop beats its `Health` every iteration (a restore, which
runs inside one, beats when it is done), and `/livez` answers 503 once the last beat is older than
the deadline. A loop stuck in a retry stops beating and is restarted by its probe; the server's
own thread, which answers whatever the loop does, is no evidence. Readiness is what the role says:
the processor's partitions assigned and restored, the reconciler's tables read whole.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from processors import logs

log = logs.get("kycstream.probes")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
LIVENESS_PATH, READINESS_PATH = "/livez", "/readyz"  # the Deployments' probes (deploy/base)


class Health:
    """The main loop's last beat (monotonic seconds) and why the role is not ready, if it is not."""

    def __init__(self, deadline_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_s = deadline_s
        self._clock = clock
        self._last = clock()
        self.unready: str | None = "starting"

    def beat(self) -> None:
        self._last = self._clock()

    def since_beat(self) -> float:
        return self._clock() - self._last

    def alive(self) -> bool:
        return self.since_beat() <= self.deadline_s

    def ready(self) -> None:
        self.unready = None

    def not_ready(self, why: str) -> None:
        self.unready = why


def app(health: Health, registry: CollectorRegistry) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """/livez and /readyz from `health`; everything else is the registry's /metrics."""
    metrics = make_wsgi_app(registry)

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == LIVENESS_PATH:
            since = round(health.since_beat(), 3)
            if health.alive():
                return _answer(start_response, 200, {"status": "ok", "since_beat_s": since})
            log.warning("liveness_failed", since_beat_s=since, deadline_s=health.deadline_s)
            return _answer(
                start_response, 503, {"status": "stuck", "since_beat_s": since, "deadline_s": health.deadline_s}
            )
        if path == READINESS_PATH:
            why = health.unready
            if why is None:
                return _answer(start_response, 200, {"status": "ready"})
            return _answer(start_response, 503, {"status": "unready", "reason": why})
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return serve


def _answer(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    phrase = "OK" if status == 200 else "Service Unavailable"
    start_response(f"{status} {phrase}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass


def serve(port: int, health: Health, registry: CollectorRegistry, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /livez, /readyz and /metrics on `port` (0: any free port) from a daemon thread."""
    server = make_server(host, port, app(health, registry), _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
