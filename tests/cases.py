"""Golden provider cases: tests/providers/<provider>/<case>.json.

A case has `body` (JSON) or `body_text` (bytes sent as is), optional `headers`, and `expect`:
{"dead_letter": "<reason code>"}, {"notice": "<kind>"} (no event, no dead letter) or the event
fields to check (a subset; `checks` and `reasons` are compared as lists of subsets, `attributes`
as a subset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).parent / "providers"


@dataclass(frozen=True)
class Case:
    provider: str
    name: str
    body: bytes
    headers: dict[str, str]
    expect: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.name}"

    @property
    def dead_letter(self) -> str | None:
        return self.expect.get("dead_letter")

    @property
    def notice(self) -> str | None:
        return self.expect.get("notice")

    @property
    def event(self) -> bool:
        """The case yields an event (neither a dead letter nor a notice)."""
        return not self.dead_letter and not self.notice


def load(provider: str | None = None) -> list[Case]:
    cases = []
    for path in sorted(CASES_DIR.glob(f"{provider or '*'}/*.json")):
        raw = json.loads(path.read_text())
        body = raw["body_text"].encode() if "body_text" in raw else json.dumps(raw["body"]).encode()
        cases.append(Case(path.parent.name, path.stem, body, raw.get("headers", {}), raw["expect"]))
    return cases


def load_fetched(provider: str = "incode") -> list[Case]:
    """Golden fetched answers: tests/providers/<provider>/fetched/<case>.json, each with its `kind`
    and `verification_id` (the envelope headers of an origin=fetch delivery); `expect` may also be
    {"not_ready": true} (the reconciler fetches again, nothing is written)."""
    from processors.model import FETCH_ID_HEADER, FETCH_KIND_HEADER

    found = []
    for path in sorted((CASES_DIR / provider / "fetched").glob("*.json")):
        raw = json.loads(path.read_text())
        headers = {FETCH_KIND_HEADER: raw["kind"], FETCH_ID_HEADER: raw["verification_id"]}
        found.append(Case(provider, f"fetched/{path.stem}", json.dumps(raw["body"]).encode(), headers, raw["expect"]))
    return found


def assert_matches(event: dict[str, Any], expect: dict[str, Any]) -> None:
    """`event` is a decoded VerificationEvent record (timestamps as ISO strings or datetimes)."""
    for key, want in expect.items():
        if key == "idempotency_key_prefix":
            assert event["idempotency_key"].startswith(want), (event["idempotency_key"], want)
        elif key in ("checks", "reasons"):
            got = event[key]
            assert len(got) == len(want), f"{key}: {got} != {want}"
            for g, w in zip(got, want, strict=True):
                assert {k: g[k] for k in w} == w, f"{key}: {g} does not match {w}"
        elif key == "attributes":
            assert {k: event["attributes"].get(k) for k in want} == want, event["attributes"]
        else:
            got = event[key]
            if hasattr(got, "isoformat"):
                got = got.isoformat().replace("+00:00", "Z")
            assert got == want, f"{key}: {got!r} != {want!r}"


# Keys whose values are personal data (PRODUCT.md: NIK, names, dates of birth, addresses, document
# numbers; plus emails and phones). Values are searched for in everything that leaves the raw topic.
PERSONAL_KEYS = frozenset(
    {
        "nik",
        "fullname",
        "firstname",
        "surname",
        "lastname",
        "fathersname",
        "mothersname",
        "dateofbirth",
        "dob",
        "birthdate",
        "address",
        "documentnumber",
        "personalnumber",
        "taxpayernumber",
        "email",
        "phone",
        "phonenumber",
        "nationality",
        "relatedrecords",
    }
)
_NOT_PERSONAL = frozenset({"PASS", "FAIL", "VALID", "INVALID", "true", "false"})


def personal_values(body: bytes) -> set[str]:
    """The personal values a case's body carries (empty for bodies that are not JSON)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    found: set[str] = set()

    def walk(node: Any, personal: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if personal and key in ("label", "format", "required"):
                    continue  # field descriptions next to a personal value are not personal
                walk(value, personal or key.lower() in PERSONAL_KEYS)
        elif isinstance(node, list):
            for item in node:
                walk(item, personal)
        elif personal and isinstance(node, str) and len(node) >= 4 and node not in _NOT_PERSONAL:
            found.add(node)

    walk(doc, False)
    return found
