"""Every dead-letter reason kycstream can write has a remedy that names a real command, listed in
docs/runbook.md (the integration test test_redrive_letters follows the texts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processors.remedies import REDRIVE, REMEDIES, explain

ROOT = Path(__file__).parents[2]
_WRITTEN = (
    re.compile(r'Rejection\(\s*"([a-z_]+)"'),  # normalizer letters
    re.compile(r'_dead_letter\(\s*\w+,\s*"([a-z_]+)"'),  # the reconciler's fetch and poll letters
)


def _reasons_in_the_code() -> set[str]:
    found: set[str] = set()
    for path in [*ROOT.glob("processors/**/*.py"), *ROOT.glob("gateway/**/*.py")]:
        text = path.read_text()
        for pattern in _WRITTEN:
            found.update(pattern.findall(text))
    return found


def test_every_reason_written_has_a_remedy() -> None:
    written = _reasons_in_the_code()
    assert {"unknown_status", "fetch_unauthorized", "poll_expired"} <= written, "the scan finds the writers"
    assert written <= set(REMEDIES), f"no remedy for {sorted(written - set(REMEDIES))}"


@pytest.mark.parametrize("reason", sorted(REMEDIES))
def test_each_remedy_names_the_redrive_command_and_is_in_the_runbook(reason: str) -> None:
    assert f"`{REDRIVE}`" in REMEDIES[reason]
    assert f"| `{reason}` |" in (ROOT / "docs" / "runbook.md").read_text()
    assert REMEDIES[reason] in (ROOT / "docs" / "runbook.md").read_text()
    assert explain(reason, "why").startswith("why; ")
