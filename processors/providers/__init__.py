"""Provider registry: one pure module per KYC provider, found by name.

Adding a provider means one new module with the members of `Provider`, its fixtures under
tests/providers/<name>/, and one line in REGISTRY.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from processors.model import ApiCredentials, AuthSpec, Normalized, Notice, NotReady, PollRequest, Rejection
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

    @property
    def UNAVAILABLE_STATUS(self) -> int: ...  # the refusal status when Kafka is away and nothing spools

    def verification_id(self, doc: Mapping[str, Any]) -> str | None: ...

    # An event, a notice that is no verification result (counted, no event, no dead letter), or why
    # the payload is not a recognizable event of the provider (a dead letter).
    def normalize(self, doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection: ...

    # Reconciliation: the status API call for one verification, and its answer as a webhook body
    # (so a polled result and a late callback for the same result share their idempotency key).
    def poll_request(
        self, verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials
    ) -> PollRequest: ...

    def poll_result(
        self, verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    # Result fetching: the provider_status of an event that is only a notice -> the kind of result
    # to fetch for it (empty: every callback carries its result). Non-empty: the module is `Fetching`.
    @property
    def FETCHES(self) -> Mapping[str, str]: ...


class Fetching(Provider, Protocol):
    """A provider some of whose callbacks are notices: the reconciler fetches their result, and the
    answer, a delivery of origin `fetch`, is normalized here."""

    def fetch_missing(self, credentials: ApiCredentials) -> str | None: ...  # what fetching lacks, if anything

    def fetch_request(self, kind: str, verification_id: str, credentials: ApiCredentials) -> PollRequest: ...

    def normalize_fetched(
        self, kind: str, verification_id: str, doc: Mapping[str, Any]
    ) -> Normalized | NotReady | Rejection: ...


def fetching(provider: Provider) -> Fetching | None:
    return provider if provider.FETCHES else None  # type: ignore[return-value]


REGISTRY: dict[str, Provider] = {
    "esign": esign,
    "signicat": signicat,
    "incode": incode,
    "metamap": metamap,
    "xendit": xendit,
}
