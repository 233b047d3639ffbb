"""The gateway's HTTP side as an OpenAPI 3.1 document: every route and every status it answers.

Served at /openapi.json; `kycstream openapi` writes it to docs/openapi.json, and a test fails when
that file drifts from this or when the gateway answers a status the document does not list.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    KafkaUnavailable,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnknownSource,
)
from processors.providers import REGISTRY

_ERROR = {"$ref": "#/components/schemas/Error"}
# Refusals of a webhook, in the order the gateway checks them (gateway/routes.py).
Refusal = tuple[type[GatewayError], str] | tuple[type[GatewayError], str, int]  # (error, when[, status])
WEBHOOK_REFUSALS: tuple[Refusal, ...] = (
    (UnknownSource, "No source of that name is configured."),
    (NotFound, "A `/{route}` its provider does not send to (none but those in its ROUTES)."),
    (MethodNotAllowed, "The method is not allowed for the source (`Allow` says which are)."),
    (Forbidden, "`allow_ips` is set and the client is not in it."),
    (RateLimited, "Over the source's `rate_limit` (`Retry-After`)."),
    (
        PayloadTooLarge,
        "The body is over `max_body_bytes` (default 1 MiB), or its raw record would be over what Kafka "
        "takes (the producer's `message.max.bytes`, 1000000 by default, less the envelope): never spooled.",
    ),
    (Unauthorized, "The credential is missing or wrong."),
    (
        KafkaUnavailable,
        "Kafka did not acknowledge within `gateway.produce_timeout_s` and the source does not spool "
        "(`Retry-After`). The status is the source's `unavailable_status`: 503 unless configured otherwise.",
    ),
    (KafkaUnavailable, "As for 503, from a source whose `unavailable_status` is 429 (Signicat's by default).", 429),
)
EXPECTATION_REFUSALS: tuple[Refusal, ...] = (
    (UnknownSource, "No source of that name, or the expectations API is off (no API keys configured)."),
    (MethodNotAllowed, "Expectations are created with POST."),
    (PayloadTooLarge, "The body is over 64 KiB."),
    (Unauthorized, "The API key is missing or wrong (`Authorization: Bearer <key>`)."),
    (InvalidRequest, "The body is not the JSON object described."),
    (KafkaUnavailable, "Kafka did not acknowledge in time (`Retry-After`)."),
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_INTERNAL = {"description": "The gateway failed (a bug): nothing was accepted; retry later.", "content": _json(_ERROR)}


def _refusals(refusals: tuple[Refusal, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for error, when, *status in refusals:
        code = str(status[0] if status else error.status)
        entry = out.setdefault(code, {"description": "", "content": _json(_ERROR)})
        entry["description"] = f"{entry['description']} `{error.code}`: {when}".strip()
    return dict(sorted(out.items()))


def _webhook_operation(method: str, routed: bool = False) -> dict[str, Any]:
    allowed = sorted(name for name, module in REGISTRY.items() if method in module.METHODS)
    return {
        "operationId": f"webhook{method.capitalize()}{'Routed' if routed else ''}",
        "summary": f"A provider's webhook ({method}: {', '.join(allowed)})",
        "description": "Authenticated, then produced to the raw topic with acks=all; 200 only once Kafka "
        "acknowledged (or, for a source that spools, once fsynced in the gateway's spool). Refused "
        "requests never reach Kafka. The body is kept as bytes: any content type is accepted.",
        "parameters": [_SOURCE, _ROUTE] if routed else [_SOURCE],
        "requestBody": {"required": True, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {"description": "Accepted.", "content": _json({"$ref": "#/components/schemas/Accepted"})},
            **_refusals(WEBHOOK_REFUSALS),
            "500": _INTERNAL,
        },
    }


_SOURCE = {
    "name": "source",
    "in": "path",
    "required": True,
    "description": "A source configured under `sources:` (the shipped configs name each after its provider).",
    "schema": {"type": "string"},
}


_ROUTE = {
    "name": "route",
    "in": "path",
    "required": True,
    "description": "For a provider that sends each kind of webhook to its own URL: one of its ROUTES "
    "(`kycstream providers` lists them); the route reaches the normalizer as the kycstream-route header.",
    "schema": {"type": "string"},
}


def _expectation_operation() -> dict[str, Any]:
    """POST /expectations/{source}: an expectation, behind the API keys."""
    return {
        "operationId": "expect",
        "summary": "Expect a verification's result (the reconciler polls if none comes)",
        "parameters": [_SOURCE],
        "security": [{"apiKey": []}],
        "requestBody": {
            "required": True,
            "content": _json({"$ref": "#/components/schemas/ExpectationRequest"}),
        },
        "responses": {
            "200": {
                "description": "Written to the expected topic.",
                "content": _json({"$ref": "#/components/schemas/Expected"}),
            },
            **_refusals(EXPECTATION_REFUSALS),
            "500": {"description": "The gateway failed (a bug); retry.", "content": {"text/plain": {}}},
        },
    }


def document(version: str) -> dict[str, Any]:
    methods = sorted({m for module in REGISTRY.values() for m in module.METHODS}, key=("POST", "PUT", "PATCH").index)
    webhook = {method.lower(): _webhook_operation(method) for method in methods}
    routed = {method.lower(): _webhook_operation(method, routed=True) for method in methods}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kycstream gateway",
            "version": version,
            "description": "Provider webhooks in, raw records out (the Kafka side: docs/asyncapi.yaml). "
            "Generated by `kycstream openapi` from gateway/openapi.py.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": {
            "/webhooks/{source}": webhook,
            "/webhooks/{source}/{route}": routed,
            "/expectations/{source}": {"post": _expectation_operation()},
            **_operational_paths(),
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "`gateway.expectations_api_keys`."}
            },
            "schemas": _SCHEMAS,
        },
    }


def _operational_paths() -> dict[str, Any]:
    """The probes, the metrics and this document."""
    return {
        "/healthz": {"get": _plain("healthz", "The process is alive.", {"200": _status_ok("ok")})},
        "/readyz": {
            "get": _plain(
                "readyz",
                "Kafka answers and every topic exists (or a source can spool meanwhile).",
                {
                    "200": _status_ok("ready"),
                    "503": {
                        "description": "Not ready: `detail` says why.",
                        "content": _json({"$ref": "#/components/schemas/Readiness"}),
                    },
                },
            )
        },
        "/metrics": {
            "get": _plain(
                "metrics",
                "Prometheus metrics.",
                {"200": {"description": "The text exposition format.", "content": {"text/plain": {}}}},
            )
        },
        "/openapi.json": {
            "get": _plain(
                "openapi",
                "This document.",
                {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
            )
        },
    }


def _plain(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses}


def _status_ok(word: str) -> dict[str, Any]:
    return {"description": f"`{word}`.", "content": _json({"$ref": "#/components/schemas/Readiness"})}


_CODES = sorted({r[0].code for r in WEBHOOK_REFUSALS + EXPECTATION_REFUSALS} | {"internal_error"})
_SCHEMAS: dict[str, Any] = {
    "Accepted": {
        "type": "object",
        "required": ["status", "request_id"],
        "properties": {
            "status": {"const": "accepted"},
            "request_id": {"type": "string", "format": "uuid", "description": "Also the `X-Request-Id` header."},
            "spooled": {"const": True, "description": "Present when the delivery waits in the gateway's spool."},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"enum": _CODES},
            "detail": {"type": "string", "description": "What happened and what to do."},
            "request_id": {"type": "string", "format": "uuid", "description": "On /webhooks/ answers."},
        },
    },
    "ExpectationRequest": {
        "type": "object",
        "required": ["verification_id"],
        "properties": {
            "verification_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "lookup": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Ids the provider's status API needs (e.g. its own ids).",
            },
            "window_s": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        },
    },
    "Expected": {
        "type": "object",
        "required": ["status", "key"],
        "properties": {
            "status": {"const": "expected"},
            "key": {"type": "string", "description": "`provider:verification_id`."},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ok", "ready", "unavailable"]},
            "spooling": {"type": "array", "items": {"type": "string"}},
            "detail": {"type": "string"},
        },
    },
}


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
