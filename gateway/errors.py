"""Refusals the gateway answers with, each a status, a stable code and a reason a person can act on."""

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
