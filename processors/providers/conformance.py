"""The conformance kit: what every provider, ours or a third party's, must pass.

`kycstream providers check NAME [--cases DIR]` runs it; kycstream's own tests run it on the five
built-in providers (tests/unit/test_conformance.py). Pure: it drives `pipeline.normalize` only.

Golden cases are JSON files in a folder: `body` (JSON) or `body_text` (sent as is), optional
`headers`, and `expect`: {"dead_letter": "<reason code>"}, {"notice": "<kind>"} or the event fields
to check (a subset; `checks` and `reasons` as lists of subsets, `attributes` as a subset). A case
may add `poll_answer` (the provider's status API answer for the same result: its polled delivery
must share the event's key). A `fetched/` subfolder holds fetched answers, each with its `kind` and
`verification_id`; their `expect` may be {"not_ready": true}.

The checks:
  golden    each case gives what it expects
  keys      a repeat is one key and one event id; a polled answer shares its callback's key
  fuzz      mangled bodies (fields dropped, retyped, nested, truncated) never raise: always an
            event, a notice or a rejection
  personal  no personal value of a case (names, document numbers, birth dates, ...) in its event
  signing   the provider's declared signing scheme (processors/signing.py) accepts what it signs,
            with the second of two secrets too (rotation), and refuses a tampered body, a wrong
            secret and, where it has a tolerance, a stale timestamp; and the published vectors of
            `signatures.json` in the cases folder, if any (a list of {"description", "body_text",
            "secret", "headers", "valid", "now"}), each give their verdict
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors import signing
from processors.model import (
    FETCH_ID_HEADER,
    FETCH_KIND_HEADER,
    Notice,
    Origin,
    RawDelivery,
    Rejection,
    VerificationEvent,
)

_RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
FUZZ_PER_CASE = 40
SIGNATURES = "signatures.json"  # published signature vectors, beside the cases


@dataclass(frozen=True)
class Case:
    provider: str
    name: str
    body: bytes
    headers: dict[str, str]
    expect: dict[str, Any]
    poll_answer: dict[str, Any] | None = None

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


def load_cases(folder: Path, provider: str) -> list[Case]:
    cases = []
    for path in sorted(folder.glob("*.json")):
        if path.name == SIGNATURES:
            continue
        raw = json.loads(path.read_text())
        body = raw["body_text"].encode() if "body_text" in raw else json.dumps(raw["body"]).encode()
        cases.append(Case(provider, path.stem, body, raw.get("headers", {}), raw["expect"], raw.get("poll_answer")))
    return cases


def load_fetched(folder: Path, provider: str) -> list[Case]:
    """The fetched answers of `folder`/fetched: each case's headers are an origin=fetch delivery's."""
    found = []
    for path in sorted((folder / "fetched").glob("*.json")):
        raw = json.loads(path.read_text())
        headers = {FETCH_KIND_HEADER: raw["kind"], FETCH_ID_HEADER: raw["verification_id"]}
        found.append(Case(provider, f"fetched/{path.stem}", json.dumps(raw["body"]).encode(), headers, raw["expect"]))
    return found


def mismatches(event: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """How `event` (a VerificationEvent record: timestamps as datetimes or ISO text) differs from
    what a case expects; empty when it matches."""
    found = []
    for key, want in expect.items():
        if key == "idempotency_key_prefix":
            if not event["idempotency_key"].startswith(want):
                found.append(f"idempotency_key {event['idempotency_key']!r} does not start with {want!r}")
        elif key in ("checks", "reasons"):
            got = event[key]
            if len(got) != len(want):
                found.append(f"{key}: {got} != {want}")
                continue
            found += [f"{key}: {g} does not match {w}" for g, w in zip(got, want, strict=True) if _sub(g, w) != w]
        elif key == "attributes":
            if (got := {k: event["attributes"].get(k) for k in want}) != want:
                found.append(f"attributes: {got} != {want}")
        else:
            got = event[key]
            if hasattr(got, "isoformat"):
                got = got.isoformat().replace("+00:00", "Z")
            if got != want:
                found.append(f"{key}: {got!r} != {want!r}")
    return found


def _sub(got: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    return {k: got.get(k) for k in want}


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
        # Persona's dashed names (name-first, email-address ...), as _plain spells them
        "namefirst",
        "namelast",
        "namemiddle",
        "emailaddress",
        "addressstreet1",
        "identificationnumber",
    }
)
_NOT_PERSONAL = frozenset({"PASS", "FAIL", "VALID", "INVALID", "true", "false"})


def _plain(key: object) -> str:
    """A field name as PERSONAL_KEYS spells it: lower case, no dashes or underscores."""
    return str(key).lower().replace("-", "").replace("_", "")


def personal_values(body: bytes) -> set[str]:
    """The personal values a body carries (empty for bodies that are not JSON)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    found: set[str] = set()

    def walk(node: Any, personal: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if personal and key in ("label", "format", "required", "type"):
                    continue  # field descriptions next to a personal value are not personal
                walk(value, personal or _plain(key) in PERSONAL_KEYS)
        elif isinstance(node, list):
            for item in node:
                walk(item, personal)
        elif personal and isinstance(node, str) and len(node) >= 4 and node not in _NOT_PERSONAL:
            if node.isdigit() and len(node) < 6:
                return  # a year or a short number: it names no one, and any count or time may hold it
            found.add(node)

    walk(doc, False)
    return found


# --- running the kit ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str  # golden, keys, fuzz, personal
    case: str
    problem: str


@dataclass
class Report:
    provider: str
    cases: int = 0
    passed: dict[str, int] = field(default_factory=dict)  # check -> cases that passed it
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.findings

    def summary(self) -> str:
        if self.cases == 0:
            return "no golden cases found"
        counts = ", ".join(f"{check} {n}" for check, n in self.passed.items())
        verdict = "passes" if self.ok else f"FAILS ({len(self.findings)} findings)"
        return f"{verdict}: {self.cases} cases; passed: {counts}"


def deliver(provider: str, body: bytes, headers: Mapping[str, str], origin: Origin = "callback") -> Any:
    """`body` through the pipeline as provider `provider`'s delivery: an event, notice or rejection."""
    from processors.pipeline import normalize  # here: pipeline imports the registry that imports us

    delivery = RawDelivery("r-kit", provider, provider, "POST", _RECEIVED, body, dict(headers), origin=origin)
    return normalize(delivery)


def run(provider: str, folder: Path, *, fuzz: int = FUZZ_PER_CASE, seed: int = 0) -> Report:
    """Every check of the kit on `provider`, with the golden cases of `folder`."""
    report = Report(provider)
    cases = load_cases(folder, provider) + load_fetched(folder, provider)
    report.cases = len(cases)
    rng = random.Random(seed)
    signature_findings = [Finding("signing", f"{provider}/signing", problem) for problem in _signing(provider, folder)]
    report.findings += signature_findings
    report.passed["signing"] = int(not signature_findings)
    for check, finds in (
        ("golden", _golden),
        ("keys", _keys),
        ("personal", _personal),
        ("fuzz", lambda case: _fuzz(case, rng, fuzz)),
    ):
        passed = 0
        for case in cases:
            found = [Finding(check, case.id, problem) for problem in finds(case)]
            report.findings += found
            passed += not found
        report.passed[check] = passed
    return report


_SECRET, _OTHER, _NOW = b"kit-secret-1", b"kit-secret-2", 1_780_000_000.0


def _signing(provider: str, folder: Path) -> Iterator[str]:
    """The declared scheme against deliveries signed as the provider would, and published vectors."""
    from processors.providers import REGISTRY

    scheme = signing.declared(REGISTRY[provider].DEFAULT_AUTH)
    body = b'{"kit": "a body as the provider sends it"}'

    def verdict(headers: Mapping[str, str], sent: bytes, secrets: tuple[bytes, ...], now: float) -> str | None:
        try:
            signing.verify(scheme, {k.lower(): v for k, v in headers.items()}, sent, secrets, now)
        except signing.SignatureRefused as exc:
            return str(exc) or "refused"
        return None

    if isinstance(scheme, signing.Unsigned):
        return  # admitted by the source's allow_ips alone: nothing to sign
    signed = signing.sign(scheme, body, _SECRET, _NOW)
    if (why := verdict(signed, body, (_SECRET,), _NOW)) is not None:
        yield f"refuses what it signs: {why}"
    if (why := verdict(signed, body, (_OTHER, _SECRET), _NOW)) is not None:
        yield f"refuses a delivery signed with the second of two secrets (a rotation): {why}"
    if verdict(signed, body, (_OTHER,), _NOW) is None:
        yield "accepts a delivery signed with another secret"
    if isinstance(scheme, signing.Hmac):
        if verdict(signed, body + b" ", (_SECRET,), _NOW) is None:
            yield "accepts a tampered body"
        if scheme.tolerance_s is not None and verdict(signed, body, (_SECRET,), _NOW + scheme.tolerance_s + 60) is None:
            yield "accepts a stale timestamp"
    vectors = folder / SIGNATURES
    for vector in json.loads(vectors.read_text()) if vectors.is_file() else []:
        sent = vector["body_text"].encode()
        why = verdict(vector["headers"], sent, (vector["secret"].encode(),), float(vector.get("now", _NOW)))
        if vector["valid"] and why is not None:
            yield f"refuses the published vector {vector.get('description', '')!r}: {why}"
        if not vector["valid"] and why is None:
            yield f"accepts the invalid vector {vector.get('description', '')!r}"


def _origin(case: Case) -> Origin:
    return "fetch" if FETCH_KIND_HEADER in case.headers else "callback"


def _golden(case: Case) -> Iterator[str]:
    from processors.avro.records import event_to_record

    outcome = deliver(case.provider, case.body, case.headers, _origin(case))
    if case.expect.get("not_ready"):
        if not (isinstance(outcome, Rejection) and outcome.code == "not_ready"):
            yield f"expected not ready, got {_said(outcome)}"
    elif case.dead_letter:
        if not isinstance(outcome, Rejection) or outcome.code != case.dead_letter:
            yield f"expected dead letter {case.dead_letter!r}, got {_said(outcome)}"
        elif not outcome.detail:
            yield "a dead letter without a detail"
    elif case.notice:
        if outcome != Notice(case.notice):
            yield f"expected notice {case.notice!r}, got {_said(outcome)}"
    elif not isinstance(outcome, VerificationEvent):
        yield f"expected an event, got {_said(outcome)}"
    else:
        yield from mismatches(event_to_record(outcome), case.expect)
        if not outcome.idempotency_key.startswith(f"{case.provider}:"):
            yield f"idempotency key {outcome.idempotency_key!r} does not start with {case.provider + ':'!r}"


def _keys(case: Case) -> Iterator[str]:
    from processors.providers import REGISTRY

    first = deliver(case.provider, case.body, case.headers, _origin(case))
    if not isinstance(first, VerificationEvent):
        return
    again = deliver(case.provider, case.body, {**case.headers, "x-request-id": "another"}, _origin(case))
    if not isinstance(again, VerificationEvent) or (again.idempotency_key, again.event_id) != (
        first.idempotency_key,
        first.event_id,
    ):
        yield f"a repeat of the same body is not the same key and event id: {_said(again)}"
    if case.poll_answer is not None:
        module = REGISTRY[case.provider]
        polled_body = module.poll_result(first.verification_id, {}, case.poll_answer)
        if polled_body is None:
            yield "its poll_answer is not a result (poll_result gave None)"
            return
        polled = deliver(case.provider, json.dumps(polled_body).encode(), {}, "poll")
        if not isinstance(polled, VerificationEvent) or polled.idempotency_key != first.idempotency_key:
            yield f"its polled answer has another key: {_said(polled)} vs {first.idempotency_key!r}"


def _personal(case: Case) -> Iterator[str]:
    from processors.avro.records import event_to_record

    outcome = deliver(case.provider, case.body, case.headers, _origin(case))
    if not isinstance(outcome, VerificationEvent):
        return  # dead letters keep the body by design: the DLQ is, with raw, where personal data lives
    text = json.dumps(event_to_record(outcome), default=str)
    for value in sorted(personal_values(case.body)):
        if value in text or value in outcome.idempotency_key:
            yield f"personal value {value[:2]}… reaches the event"


def _fuzz(case: Case, rng: random.Random, count: int) -> Iterator[str]:
    try:
        doc = json.loads(case.body)
    except ValueError:
        return
    for _ in range(count):
        body = _mangle(doc, rng)
        try:
            outcome = deliver(case.provider, body, case.headers, _origin(case))
        except Exception as exc:  # the contract is "event, notice or reason", never a raise
            yield f"normalize raised {type(exc).__name__} on a mangled body {body[:80]!r}"
            return
        if not isinstance(outcome, VerificationEvent | Notice | Rejection):
            yield f"normalize returned {type(outcome).__name__}"
            return
        if isinstance(outcome, Rejection) and outcome.code == "normalizer_error":
            yield f"the normalizer raised on a mangled body ({outcome.detail}): {body[:80]!r}"
            return


_ODD_VALUES: tuple[Any, ...] = (None, "", 0, -1, 1.5, True, [], {}, "x" * 300, [None], {"a": None}, "ÿ\u0000")


def _mangle(doc: Any, rng: random.Random) -> bytes:
    """`doc` with one random change deep inside: a field dropped, retyped or nested; or truncated text."""
    if rng.random() < 0.1:
        text = json.dumps(doc).encode()
        return text[: rng.randrange(len(text))] if text else text
    copy = json.loads(json.dumps(doc))
    paths = list(_paths(copy, ()))
    if not paths:
        return json.dumps(rng.choice(_ODD_VALUES)).encode()
    path = rng.choice(paths)
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = rng.random()
    if action < 0.3 and isinstance(parent, dict):
        del parent[last]
    elif action < 0.5:
        parent[last] = [parent[last]]
    else:
        parent[last] = rng.choice(_ODD_VALUES)
    return json.dumps(copy).encode()


def _paths(node: Any, at: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*at, key)
        yield from _paths(value, (*at, key))


def _said(outcome: object) -> str:
    if isinstance(outcome, Rejection):
        return f"dead letter {outcome.code!r} ({outcome.detail})"
    if isinstance(outcome, Notice):
        return f"notice {outcome.kind!r}"
    if isinstance(outcome, VerificationEvent):
        return f"event {outcome.status.value} key {outcome.idempotency_key!r}"
    return repr(outcome)
