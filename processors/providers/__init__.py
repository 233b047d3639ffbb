"""Provider registry: every installed provider, found by entry point (`kycstream.providers`).

A provider is a pure module with the members of `Provider`, registered by its distribution:

    [project.entry-points."kycstream.providers"]
    onfido = "kycstream_onfido"

kycstream's own five are registered the same way (pyproject.toml): nothing tells a built-in
provider from a third-party one. A provider that fails to load, or lacks a member, is reported in
BROKEN with its name and error (and by `kycstream providers`), and the others work on.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from processors.model import ApiCredentials, AuthSpec, Normalized, Notice, NotReady, PollRequest, Rejection
from processors.signing import Scheme

ENTRY_POINTS = "kycstream.providers"


class Provider(Protocol):
    @property
    def NAME(self) -> str: ...

    @property
    def DEFAULT_AUTH(self) -> AuthSpec | Scheme: ...  # a processors.signing declaration (or a named AuthSpec)

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


# Optional members: ROUTES (sub-paths its webhooks may come to, /webhooks/{source}/{route}: the route
# reaches normalize as the kycstream-route header), CASES (golden cases' folder), MESSAGES (fixed
# message texts an event may carry). Every provider must have these; a Fetching one (non-empty
# FETCHES) the fetch members too.
_REQUIRED = ("NAME", "DEFAULT_AUTH", "METHODS", "HEADERS", "UNAVAILABLE_STATUS", "FETCHES")
_CALLABLE = ("verification_id", "normalize", "poll_request", "poll_result")
_FETCH_CALLABLE = ("fetch_missing", "fetch_request", "normalize_fetched")


@dataclass(frozen=True)
class Installed:
    """Where an installed provider comes from: for `kycstream providers` and the conformance kit."""

    name: str
    module: Provider
    distribution: str
    version: str
    target: str  # the entry point's value, e.g. processors.providers.esign


def problems(name: str, module: object) -> list[str]:
    """What keeps `module` from being provider `name` (empty: nothing)."""
    found = [f"no {member}" for member in _REQUIRED if not hasattr(module, member)]
    found += [f"{member} is not callable" for member in _CALLABLE if not callable(getattr(module, member, None))]
    if found:
        return found
    if name != module.NAME:  # type: ignore[attr-defined]
        found.append(f"its NAME is {module.NAME!r}, registered as {name!r}")  # type: ignore[attr-defined]
    if module.FETCHES:  # type: ignore[attr-defined]
        found += [f"FETCHES without {m}()" for m in _FETCH_CALLABLE if not callable(getattr(module, m, None))]
    return found


def discover(group: str = ENTRY_POINTS) -> tuple[dict[str, Installed], dict[str, str]]:
    """The providers installed under `group`, and those that could not be used (name -> why)."""
    points: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for point in importlib.metadata.entry_points(group=group):
        points.setdefault(point.name, []).append(point)
    installed: dict[str, Installed] = {}
    broken: dict[str, str] = {}
    for name, found in sorted(points.items()):
        targets = sorted({point.value for point in found})
        if len(targets) > 1:
            broken[name] = f"registered more than once: {', '.join(targets)}"
            continue
        point = found[0]
        try:
            module = point.load()
        except Exception as exc:  # a broken plug-in must not take the others down
            broken[name] = f"{point.value} failed to import: {type(exc).__name__}: {exc}"
            continue
        if wrong := problems(name, module):
            broken[name] = f"{point.value} is not a kycstream provider: {'; '.join(wrong)}"
            continue
        dist = point.dist
        installed[name] = Installed(
            name, module, dist.name if dist else "?", dist.version if dist else "?", point.value
        )
    return installed, broken


INSTALLED, BROKEN = discover()
REGISTRY: dict[str, Provider] = {name: found.module for name, found in INSTALLED.items()}


def providers_known() -> str:
    """What an error about an unknown provider name says: what is installed, and what is broken."""
    if not REGISTRY and not BROKEN:
        return f"no provider is installed (entry points {ENTRY_POINTS!r}): install kycstream (pip install -e .)"
    said = f"installed providers: {', '.join(sorted(REGISTRY)) or 'none'}"
    if BROKEN:
        said += "; broken: " + "; ".join(f"{name} ({why})" for name, why in sorted(BROKEN.items()))
    return said
