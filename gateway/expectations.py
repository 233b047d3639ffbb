"""POST /expectations/{source}: "I started verification X with this source's provider".

Authenticated with the gateway's own API keys (never a provider credential). The expectation is
written to the expected topic; `kycstream reconcile` polls the provider if no final result comes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import errors
from gateway.auth import AcceptedCredentials
from gateway.errors import GatewayError, InvalidRequest, KafkaUnavailable, MethodNotAllowed, UnknownSource
from gateway.routes import RawSink, read_body
from gateway.settings import GatewaySettings
from processors import logs, signing
from processors.errors import BrokerError
from processors.model import Expectation
from processors.secretfile import SecretFile

log = logs.get("kycstream.gateway")
_MAX_BODY = 64 * 1024


class ExpectationsEndpoint:
    def __init__(self, settings: GatewaySettings, sink: RawSink, clock: Callable[[], datetime]) -> None:
        keys = settings.gateway.expectations_api_keys
        file = _keys_file(settings.gateway.expectations_api_keys_file)
        self.enabled = bool(keys) or file is not None
        # Like a source's webhook credentials: the config's keys plus the file's as it is now.
        self.auth = AcceptedCredentials(signing.Bearer(), tuple(k.get_secret_value().encode() for k in keys), file)
        self.providers = {name: source.provider for name, source in settings.sources.items()}
        self.sink = sink
        self.clock = clock
        self.retry_after = str(settings.gateway.retry_after_s)

    async def handle(self, request: Request) -> Response:
        try:
            return await self._expect(request)
        except GatewayError as exc:
            return errors.response(exc)

    async def _expect(self, request: Request) -> Response:
        name = request.path_params["source"]
        if not self.enabled:
            raise UnknownSource(
                "the expectations API is off: set gateway.expectations_api_keys "
                "(or gateway.expectations_api_keys_file) to turn it on"
            )
        provider = self.providers.get(name)
        if provider is None:
            raise UnknownSource(f"no webhook source named {name!r} is configured")
        if request.method != "POST":
            raise MethodNotAllowed("expectations are created with POST", {"allow": "POST"})
        body = await read_body(request.receive, _MAX_BODY, request.headers.get("content-length"))
        self.auth.check(dict(request.headers), body)
        expectation = Expectation(source=name, provider=provider, expected_at=self.clock(), **_fields(body))
        try:
            await self.sink.write_expectation(expectation)
        except BrokerError as exc:
            raise KafkaUnavailable(f"{exc}; retry later", {"retry-after": self.retry_after}) from exc
        return JSONResponse({"status": "expected", "key": expectation.key})


def _keys_file(path: Path | None) -> SecretFile | None:
    if path is None:
        return None
    if not path.exists():  # the optional Secret is not created: the route is off, as without keys
        log.warning("expectations_api_off", keys_file=str(path), problem="does not exist", until="a restart finds it")
        return None
    return SecretFile(path)


def _fields(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest('body must be a JSON object: {"verification_id": "...", "lookup": {...}}')
    vid = doc.get("verification_id")
    if not isinstance(vid, str) or not vid.strip() or len(vid) > 256:
        raise InvalidRequest("verification_id must be a non-empty string of at most 256 characters")
    lookup = doc.get("lookup", {})
    if not isinstance(lookup, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in lookup.items()):
        raise InvalidRequest("lookup must be an object of string values (e.g. the provider's own ids)")
    window = doc.get("window_s")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 2**31 - 1):
        raise InvalidRequest("window_s must be a positive whole number of seconds")
    return {"verification_id": vid.strip(), "lookup": lookup, "window_s": window}
