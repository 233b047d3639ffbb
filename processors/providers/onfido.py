"""Onfido (Entrust Identity Verification) webhooks, API v3.6: Studio workflow runs and classic checks.

Body (Onfido's OpenAPI `webhook_event`, its SDKs' test events): {"payload": {"resource_type",
"action", "object": {"id", "status", "started_at_iso8601"?, "completed_at_iso8601"?, "href"},
"resource"?: {...}}}. `action` says what happened; `object.status` is the resource's status then.

- Studio: `workflow_run.completed` carries the run's final status; `workflow_task.started` /
  `.completed` are progress of one task of a run (the run id is `object.workflow_run_id`).
- Classic: `check.completed` says the check is done (`status: complete`), not its result: the
  result (clear / consider) is fetched with `GET /v3.6/checks/{id}` (FETCHES, below).
- `report.*` (one report of a check, named by its own id), `audit_log.created`, watchlist monitor
  matches, timeline files and evidence folders are notices: no verification result.

`resource` may hold personal data (a task's input and output: names, document numbers, dates of
birth): only ids, status words, result words, reasons and error types are read from it.

Auth (X-SHA2-Signature): the hex HMAC-SHA256 of the raw body, keyed with the webhook's token; no
timestamp, no prefix (Onfido's "Manual webhook signature verification"; WebhookEventVerifier in
its SDKs): the declared scheme `signing.ONFIDO`; SIGNATURE says it in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors import signing
from processors.model import (
    ApiCredentials,
    Check,
    CheckOutcome,
    Normalized,
    Notice,
    NotReady,
    PollRequest,
    Reason,
    Rejection,
    VerificationStatus,
)
from processors.providers._read import obj, scalar_attributes, text, timestamp, word_check

NAME = "onfido"
SIGNATURE = {
    "header": "X-SHA2-Signature",
    "signed": "the raw request body, as received",
    "algorithm": "HMAC-SHA256, keyed with the webhook's token (one per registered webhook)",
    "encoding": "lower-case hex, no prefix",
    "tolerance": "none: the body carries no signed timestamp",
}
DEFAULT_AUTH = signing.ONFIDO
METHODS = ("POST",)
HEADERS: tuple[str, ...] = ()
# Kafka away and no spool: Onfido wants a 2xx within 10 s and resends any other answer 5 times, 30 s,
# 2 min, 15 min, 2 h and 10 h after the first attempt (seed 001): 503 with Retry-After, a retry
# comes. After the last one (10 h) a delivery is gone unless asked for again (POST /v3.6/webhooks/resend):
# `on_kafka_unavailable: spool` keeps it through longer outages.
UNAVAILABLE_STATUS = 503
API_VERSION = "v3.6"

_COMPLETED_CHECK = "check.completed/complete"
FETCHES = {_COMPLETED_CHECK: "check"}  # the check's result is fetched: `check` below

# Per resource type, its status words (Onfido's webhook_event_object_status / _resource_status).
_RUN_STATUS = {
    "processing": VerificationStatus.PENDING,
    "awaiting_input": VerificationStatus.PENDING,
    "awaiting_client_input": VerificationStatus.PENDING,
    "approved": VerificationStatus.APPROVED,
    "declined": VerificationStatus.REJECTED,
    "review": VerificationStatus.REVIEW,
    "abandoned": VerificationStatus.EXPIRED,  # the applicant left: no result unless a new run starts
    "error": VerificationStatus.ERROR,
}
_TASK_STATUS = dict.fromkeys(("started", "completed", "cancelled"), VerificationStatus.PENDING)
_CHECK_STATUS = {
    **dict.fromkeys(("in_progress", "awaiting_applicant", "paused", "reopened"), VerificationStatus.PENDING),
    "complete": VerificationStatus.PENDING,  # done, result not said: fetched
    "withdrawn": VerificationStatus.EXPIRED,  # withdrawn by the client: this check will have no result
}
_STATUS = {"workflow_run": _RUN_STATUS, "workflow_task": _TASK_STATUS, "check": _CHECK_STATUS}
# The status an action implies, when object.status (optional in Onfido's schema) is left out; a
# run's status is its decision and is never implied.
_IMPLIED = {
    "check.started": "in_progress",
    "check.completed": "complete",
    "check.reopened": "reopened",
    "check.withdrawn": "withdrawn",
    "workflow_task.started": "started",
    "workflow_task.completed": "completed",
}
_NOTICE_TYPES = frozenset(
    {"report", "audit_log", "watchlist_monitor", "workflow_timeline_file", "workflow_run_evidence_folder"}
)
_RESULT_OUTCOMES = {"CLEAR": CheckOutcome.PASS, "CONSIDER": CheckOutcome.FAIL}


def verification_id(doc: Mapping[str, Any]) -> str | None:
    """The workflow run id (task events: the run they belong to) or the check id."""
    payload = obj(doc.get("payload"))
    found = obj(payload.get("object"))
    kind = _resource_type(payload)
    if kind == "workflow_task":
        return text(found.get("workflow_run_id")) or text(obj(payload.get("resource")).get("workflow_run_id"))
    if kind in ("workflow_run", "check"):
        return text(found.get("id"))
    return None


def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Notice | Rejection:
    payload = obj(doc.get("payload"))
    action = (text(payload.get("action")) or "").lower()
    kind = _resource_type(payload)
    if kind in _NOTICE_TYPES and action:
        return Notice(action)
    statuses = _STATUS.get(kind or "")
    if statuses is None or not action:
        return Rejection("unrecognized_event", "onfido body has no payload.action of a workflow run, task or check")
    vid = verification_id(doc)
    if vid is None:
        where = "object.workflow_run_id" if kind == "workflow_task" else "object.id"
        return Rejection("missing_verification_id", f"onfido {action} has no payload.{where}")
    found = obj(payload.get("object"))
    word = text(found.get("status")) or _IMPLIED.get(action)
    if word is None:
        return Rejection("unrecognized_event", f"onfido {action} has no payload.object.status")
    status = statuses.get(word.lower())
    if status is None:
        return Rejection("unknown_status", f"onfido {kind} status {word!r} has no mapping")
    provider_status = f"{action}/{word.lower()}"
    resource = obj(payload.get("resource"))
    occurred_at = timestamp(found.get("completed_at_iso8601")) or timestamp(found.get("started_at_iso8601"))
    if kind == "workflow_run":
        return Normalized(
            verification_id=vid,
            status=status,
            provider_status=provider_status,
            # The run's status, not the delivery: a polled run and its callback share it.
            idempotency_key=f"{NAME}:{vid}:workflow_run:{word.lower()}",
            occurred_at=occurred_at or timestamp(resource.get("updated_at")),
            event_type=action,
            subject_id=text(resource.get("applicant_id")),
            reasons=_reasons(resource),
            attributes=scalar_attributes(resource, "workflow_id", "workflow_version_id"),
        )
    # A task (one of a run's steps, which a workflow may run again) or a check's progress: one key
    # per status and time, so a check completed again (reopened) is fetched again.
    moment = occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") if occurred_at else ""
    task = text(found.get("id")) if kind == "workflow_task" else None
    return Normalized(
        verification_id=vid,
        status=status,
        provider_status=provider_status,
        idempotency_key=f"{NAME}:{vid}:{provider_status}:{task + ':' if task else ''}{moment}",
        occurred_at=occurred_at,
        event_type=action,
        subject_id=text(resource.get("applicant_id")),
        checks=_task_checks(found, resource) if task else (),
        attributes={"task_id": task, **scalar_attributes(found, "task_def_id")} if task else {},
    )


def _resource_type(payload: Mapping[str, Any]) -> str | None:
    """The resource an event is about: the part of `action` before the dot, else `resource_type`."""
    action = text(payload.get("action"))
    named = action.partition(".")[0] if action and "." in action else text(payload.get("resource_type"))
    return named.lower() if named else None


def _reasons(resource: Mapping[str, Any]) -> tuple[Reason, ...]:
    """A run's `reasons` (codes configured in the workflow) and its error's `type`; never the error's
    message, which is prose."""
    found = [Reason(code=code[:128]) for item in _list(resource.get("reasons")) if (code := text(item))]
    if (error := text(obj(resource.get("error")).get("type"))) is not None:
        found.append(Reason(code=error[:128], field="error"))
    return tuple(found)


def _task_checks(found: Mapping[str, Any], resource: Mapping[str, Any]) -> tuple[Check, ...]:
    """A completed task whose output has a result word (a document or face check: clear / consider)."""
    output = resource.get("output")
    word = text(obj(output).get("result")) if isinstance(output, Mapping) else None
    name = text(found.get("task_def_id")) or text(found.get("id"))
    return (word_check(name, word, _RESULT_OUTCOMES),) if word and name else ()


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- reconciliation: the workflow run (GET /v3.6/workflow_runs/{id}) or, with lookup -------------
# {"resource_type": "check"}, the check (GET /v3.6/checks/{id}).


def _auth(credentials: ApiCredentials) -> dict[str, str]:
    return {"authorization": f"Token token={credentials.token}"}


def poll_request(verification_id: str, lookup: Mapping[str, str], credentials: ApiCredentials) -> PollRequest:
    collection = "checks" if lookup.get("resource_type") == "check" else "workflow_runs"
    return PollRequest(path=f"/{API_VERSION}/{collection}/{verification_id}", headers=_auth(credentials))


_CHECK_ACTIONS = {"complete": "check.completed", "withdrawn": "check.withdrawn", "reopened": "check.reopened"}


def poll_result(verification_id: str, lookup: Mapping[str, str], answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The answer as the webhook its status would have sent. A complete check is its check.completed
    notice: its result is then fetched like a callback's."""
    word = text(answer.get("status"))
    if word is None:
        return None
    if lookup.get("resource_type") == "check":
        action = _CHECK_ACTIONS.get(word.lower(), "check.started")
        return {
            "payload": {"resource_type": "check", "action": action, "object": {"id": verification_id, "status": word}}
        }
    resource = {k: answer[k] for k in ("applicant_id", "workflow_id", "updated_at", "reasons", "error") if k in answer}
    return {
        "payload": {
            "resource_type": "workflow_run",
            "action": "workflow_run.completed",
            "object": {"id": verification_id, "status": word},
            "resource": {"id": verification_id, "status": word, **resource},
        }
    }


# --- fetched results: the check (GET /v3.6/checks/{id}) after check.completed --------------------
# Its `result` is the decision (Onfido's check object: "the overall result of the check, based on
# the results of the constituent reports"). It has no completion time (`created_at` is when it was
# created): the pipeline dates the result by the check.completed notice.

_CHECK_RESULT = {"clear": VerificationStatus.APPROVED, "consider": VerificationStatus.REVIEW}
_CHECK_NOT_DONE = frozenset({"in_progress", "awaiting_applicant", "paused", "reopened"})


def fetch_missing(credentials: ApiCredentials) -> str | None:
    if not credentials.token:
        return "token (the Onfido API token, sent as 'Authorization: Token token=...' to fetch check results)"
    return None


def fetch_request(kind: str, verification_id: str, credentials: ApiCredentials) -> PollRequest:
    return PollRequest(path=f"/{API_VERSION}/checks/{verification_id}", headers=_auth(credentials))


def normalize_fetched(kind: str, verification_id: str, doc: Mapping[str, Any]) -> Normalized | NotReady | Rejection:
    if kind != "check":
        return Rejection("unrecognized_event", f"onfido has no fetched result of kind {kind!r}")
    word = (text(doc.get("status")) or "").lower()
    if word in _CHECK_NOT_DONE or not word:
        return NotReady(f"the check's status is {word or 'missing'}")
    if word == "withdrawn":
        return _fetched(verification_id, VerificationStatus.EXPIRED, "withdrawn", doc)
    if word != "complete":
        return Rejection("unknown_status", f"onfido check status {word!r} has no mapping")
    result = text(doc.get("result"))
    if result is None:
        return NotReady("the check is complete but has no result yet")
    status = _CHECK_RESULT.get(result.lower())
    if status is None:
        return Rejection("unknown_status", f"onfido check result {result!r} has no mapping")
    return _fetched(verification_id, status, result.lower(), doc)


def _fetched(verification_id: str, status: VerificationStatus, word: str, doc: Mapping[str, Any]) -> Normalized:
    return Normalized(
        verification_id=verification_id,
        status=status,
        provider_status=f"check/{word}",
        idempotency_key=f"{NAME}:{verification_id}:check:{word}",
        event_type="check",
        subject_id=text(doc.get("applicant_id")),
        attributes=scalar_attributes(doc, "sandbox"),
    )
