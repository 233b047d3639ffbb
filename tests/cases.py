"""Golden provider cases: tests/providers/<provider>/<case>.json, read by the conformance kit
(processors/providers/conformance.py, where the case format is described)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors.providers.conformance import PERSONAL_KEYS, Case, load_cases, mismatches, personal_values
from processors.providers.conformance import load_fetched as _load_fetched

CASES_DIR = Path(__file__).parent / "providers"

__all__ = ["CASES_DIR", "PERSONAL_KEYS", "Case", "assert_matches", "load", "load_fetched", "personal_values"]


def load(provider: str | None = None) -> list[Case]:
    names = [provider] if provider else sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
    return [case for name in names for case in load_cases(CASES_DIR / name, name)]


def load_fetched(provider: str = "incode") -> list[Case]:
    return _load_fetched(CASES_DIR / provider, provider)


def assert_matches(event: dict[str, Any], expect: dict[str, Any]) -> None:
    """`event` is a decoded VerificationEvent record (timestamps as ISO strings or datetimes)."""
    problems = mismatches(event, expect)
    assert not problems, problems
