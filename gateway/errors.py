"""Refusals the gateway answers with, each a status, a stable code and a reason a person can act on,
and the one way they are rendered: `{"error": code, "detail": reason[, "request_id": id]}`."""

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response

from processors.errors import KycstreamError


class GatewayError(KycstreamError):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class UnknownSource(GatewayError):
    status = 404
    code = "unknown_source"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"


class KafkaUnavailable(GatewayError):
    status = 503
    code = "kafka_unavailable"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, status: int = 503) -> None:
        super().__init__(detail, headers)
        self.status = status  # per source: some providers punish a 5xx (sources.<name>.unavailable_status)


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"


class SpoolFailed(KafkaUnavailable):
    code = "spool_failed"  # Kafka away and the local spool not writable (a full disk): nothing accepted


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class HttpError(GatewayError):
    """Any other refusal Starlette's routing raised (its status as given)."""

    code = "http_error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, status: int = 400) -> None:
        super().__init__(detail, headers)
        self.status = status


def from_http(exc: HTTPException) -> GatewayError:
    """Starlette's routing refusal (no such route, a method it does not serve) as ours."""
    kind = {404: NotFound, 405: MethodNotAllowed}.get(exc.status_code)
    headers = dict(exc.headers or {})
    return kind(exc.detail, headers) if kind else HttpError(exc.detail, headers, exc.status_code)


def body(exc: GatewayError, request_id: str | None = None) -> bytes:
    content = {"error": exc.code, "detail": exc.detail}
    if request_id is not None:
        content["request_id"] = request_id
    return orjson.dumps(content)


def response(exc: GatewayError, request_id: str | None = None) -> Response:
    return Response(body(exc, request_id), status_code=exc.status, headers=exc.headers, media_type="application/json")
