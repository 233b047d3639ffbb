"""Headers that authenticate a body the way each auth scheme expects (as a provider would send)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.settings import SourceSettings


def auth_headers(source: SourceSettings, body: bytes, secret: str = "dev-secret") -> dict[str, str]:
    scheme, header = source.auth.scheme, source.auth.header or "authorization"
    if scheme == "bearer":
        return {header: f"Bearer {secret}"}
    if scheme == "basic":
        return {header: "Basic " + base64.b64encode(secret.encode()).decode()}
    if scheme == "hmac_sha256":
        return {header: hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    if scheme in ("header_token", "api_key"):
        return {header: secret}
    return {}
