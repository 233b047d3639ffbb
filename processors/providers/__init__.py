"""Provider registry: one pure module per KYC provider, found by name.

Adding a provider means one new module with the members of `Provider`, its fixtures under
tests/providers/<name>/, and one line in REGISTRY.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from processors.model import AuthSpec, Normalized, PollRequest, Rejection
from processors.providers import esign, incode, metamap, signicat, xendit


class Provider(Protocol):
    @property
    def NAME(self) -> str: ...

    @property
    def DEFAULT_AUTH(self) -> AuthSpec: ...

    @property
    def METHODS(self) -> tuple[str, ...]: ...  # HTTP methods its webhooks may use

    @property
    def HEADERS(self) -> tuple[str, ...]: ...  # request headers the normalizer reads (kept in the raw envelope)

    def verification_id(self, doc: Mapping[str, Any]) -> str | None: ...

    def normalize(self, doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection: ...

    # Reconciliation: the status API call for one verification, and its answer as a webhook body
    # (so a polled result and a late callback for the same result share their idempotency key).
    def poll_request(self, verification_id: str, lookup: Mapping[str, str], token: str) -> PollRequest: ...

    def poll_result(
        self, verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


REGISTRY: dict[str, Provider] = {
    "esign": esign,
    "signicat": signicat,
    "incode": incode,
    "metamap": metamap,
    "xendit": xendit,
}
