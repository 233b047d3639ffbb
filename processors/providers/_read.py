"""Tolerant readers for untrusted JSON: they return None instead of raising on a wrong shape."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from processors.model import Check, CheckOutcome, to_millis


def obj(value: object) -> Mapping[str, Any]:
    if type(value) is dict:  # what JSON gives: no ABC check
        return value
    return value if isinstance(value, Mapping) else {}


def text(value: object) -> str | None:
    """A non-empty string (numbers are accepted as their decimal text), else None."""
    if type(value) is str:  # what JSON gives almost always: one check, one strip
        return value.strip() or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    as_float = float(value)
    return as_float if as_float == as_float and abs(as_float) != float("inf") else None


def timestamp(value: object) -> datetime | None:
    """An ISO-8601 instant; a naive one is taken as UTC. Anything else is None."""
    raw = text(value)
    if raw is None or len(raw) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return to_millis(utc)


def scalar_attributes(doc: Mapping[str, Any], *names: str) -> dict[str, str]:
    """The named top-level scalars of `doc`, as strings (booleans as true/false)."""
    out: dict[str, str] = {}
    for name in names:
        value = doc.get(name)
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif (as_text := text(value)) is not None:
            out[name] = as_text
    return out


def word_check(name: object, word: object, outcomes: Mapping[str, CheckOutcome]) -> Check:
    """A check from a provider's outcome word; a word it does not know is kept as SKIPPED + code."""
    upper = (text(word) or "").upper()
    mapped = outcomes.get(upper)
    return Check(
        name=str(name)[:128], outcome=mapped or CheckOutcome.SKIPPED, code=None if mapped else (upper[:64] or None)
    )
