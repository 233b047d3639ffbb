"""What re-drives a dead letter, by reason: the text a letter's `detail` ends with.

Every reason a letter can carry is here, with the command that really sends its record back
(docs/runbook.md lists them; a test follows each text literally). `kycstream redrive` handles
the three kinds of letter: a raw delivery goes back to the raw topic once a normalizer accepts it;
a fetch letter's notice event goes back to the events topic, where the reconciler's fetcher takes
it as a new job; a poll letter's expectation is posted again with a fresh give-up window.
"""

from __future__ import annotations

REDRIVE = "kycstream redrive"
_ONCE_FIXED = f"`{REDRIVE}` sends it back once a normalizer accepts it"
_BAD_INPUT = (
    f"not a webhook kycstream can read: kept for inspection; `{REDRIVE}` sends it back once a normalizer accepts it"
)
_RESTART_THEN = "restart the reconciler, then run `" + REDRIVE + "`"

REMEDIES: dict[str, str] = {
    # raw deliveries the processor could not normalize (source: the raw topic)
    "unknown_status": f"add the mapping, deploy it, then {_ONCE_FIXED}",
    "unrecognized_event": f"fix the normalizer if the payload is a real event, then {_ONCE_FIXED}",
    "missing_verification_id": f"fix the normalizer if the id is elsewhere in the payload, then {_ONCE_FIXED}",
    "normalizer_error": f"fix the provider module (the place it raised is above), then {_ONCE_FIXED}",
    "unknown_provider": f"deploy a normalizer for the provider, then {_ONCE_FIXED}",
    "not_ready": f"the fetcher writes ready answers only: fix the normalizer, then {_ONCE_FIXED}",
    "undecodable_envelope": f"not a RawDelivery of a known schema: add it to schemas/history/, then {_ONCE_FIXED}",
    "empty_body": _BAD_INPUT,
    "invalid_json": _BAD_INPUT,
    "not_an_object": _BAD_INPUT,
    "original_not_held": "the letter kept a prefix of a record too large to copy, and the raw topic no longer holds "
    f"the record (retention): it cannot be re-driven. `{REDRIVE}` re-sends such letters from the raw topic while "
    "it holds them",
    # fetches the reconciler gave up on (source: the events topic; the record is the notice event)
    "fetch_unauthorized": f"fix the source's poll credentials, {_RESTART_THEN}: it re-queues the fetch",
    "fetch_failed": f"once the provider's API answers again, run `{REDRIVE}`: it re-queues the fetch",
    "fetch_expired": f"once the provider has the result, run `{REDRIVE}`: it re-queues the fetch",
    # polls the reconciler gave up on (source: the expected topic; the record is the expectation)
    "poll_unauthorized": f"fix the source's poll.token (read again without a restart), then run `{REDRIVE}`: "
    "it posts the expectation again",
    "poll_expired": f"to poll again, run `{REDRIVE}`: it posts the expectation again with a fresh give-up window",
}


def explain(reason: str, detail: str) -> str:
    """`detail` followed by what re-drives a letter of `reason`."""
    remedy = REMEDIES.get(reason, f"fix the cause, then run `{REDRIVE}`")
    return f"{detail}; {remedy}" if detail else remedy
