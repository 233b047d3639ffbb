"""Amazon MSK with IAM: librdkafka's OAUTHBEARER token is a request signed with the pod's AWS
credentials by AWS's signer (aws-msk-iam-sasl-signer-python, the `kycstream[msk]` extra), handed over
through confluent-kafka's `oauth_cb`, which librdkafka calls when a client starts and before the
token expires."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from processors import logs
from processors.errors import ConfigError
from processors.settings import MSK_SIGNER

log = logs.get("kycstream.kafka.msk")

TokenCallback = Callable[[str | None], tuple[str, float]]


def token_callback(region: str) -> TokenCallback:
    """An `oauth_cb`: (token, expiry in seconds since the epoch) for the cluster's `region`."""
    try:
        signer = importlib.import_module(MSK_SIGNER).MSKAuthTokenProvider
    except ImportError as exc:
        raise ConfigError(
            "kafka.sasl_oauthbearer_method msk_iam needs AWS's signer: pip install 'kycstream[msk]'"
        ) from exc

    def oauth_cb(_oauthbearer_config: str | None) -> tuple[str, float]:
        try:
            token, expiry_ms = signer.generate_auth_token(region)
        except Exception as exc:  # librdkafka retries; the log says why (no AWS credentials, no role)
            log.error("msk_iam_token_failed", region=region, error=f"{type(exc).__name__}: {exc}")
            raise
        return token, expiry_ms / 1000

    return oauth_cb
