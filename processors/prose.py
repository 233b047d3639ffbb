"""Events carry codes, not prose: what a normalized event may hold of a provider's text.

A provider's free text (MetaMap step error messages, Xendit failure_reasons[].message) can quote
a name or a document number, and every consumer of the events topic reads it for 30 days. It stays
in the raw topic; an event keeps the provider's codes, our own words, and a message only when the
provider module lists it among its fixed strings (`MESSAGES`). `plain` applies that to whatever a
provider module returned, so the rule holds by construction, not by each module's care. A module
without `MESSAGES` (a plug-in written before it) gets no message through, which is the safe side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Set

from processors.model import Check, Normalized, Reason

# A code, a status word, an id: no spaces, no quotes, nothing a sentence needs.
CODE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
# A field path (Xendit's `stakeholders[0].identification[1]`): a code with indexes.
FIELD = re.compile(r"[A-Za-z0-9_.:/@+\[\]-]{1,128}")
UNNAMED = "unnamed"  # a check whose name is not a code
UNCODED = "uncoded"  # a reason whose code is not a code


def code(value: str | None) -> str | None:
    return value if value is not None and CODE.fullmatch(value) else None


def plain(found: Normalized, messages: Set[str]) -> Normalized:
    """`found` with every text that is not a code, an id or one of `messages` left out."""
    return dataclasses.replace(
        found,
        subject_id=code(found.subject_id),
        session_id=code(found.session_id),
        checks=tuple(_check(c, messages) for c in found.checks),
        reasons=tuple(_reason(r, messages) for r in found.reasons),
        attributes={k: v for k, v in found.attributes.items() if code(k) and code(v)},
    )


def _check(check: Check, messages: Set[str]) -> Check:
    return Check(
        name=code(check.name) or UNNAMED,
        outcome=check.outcome,
        score=check.score,
        code=code(check.code),
        message=check.message if check.message in messages else None,
    )


def _reason(reason: Reason, messages: Set[str]) -> Reason:
    return Reason(
        code=code(reason.code) or UNCODED,
        message=reason.message if reason.message in messages else None,
        field=reason.field if reason.field is not None and FIELD.fullmatch(reason.field) else None,
    )
