"""The conformance kit (processors/providers/conformance.py) and provider discovery by entry point:
our five providers pass the kit, the kit catches what it is for, a broken plug-in is reported."""

from __future__ import annotations

import hashlib
import hmac
import json
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from processors import providers, signing
from processors.model import Normalized, Rejection, VerificationStatus
from processors.providers import conformance, discover, xendit
from tests import cases


@pytest.mark.parametrize("name", sorted(providers.REGISTRY))
def test_each_installed_provider_passes_the_kit(name: str) -> None:
    report = conformance.run(name, cases.CASES_DIR / name)
    assert report.findings == [] and report.ok, report.summary()
    assert set(report.passed) == {"signing", "golden", "keys", "personal", "fuzz"}


def test_the_builtin_providers_are_found_by_entry_point_like_any_other() -> None:
    assert set(providers.INSTALLED) >= {"esign", "signicat", "incode", "metamap", "xendit"}
    assert {found.distribution for found in providers.INSTALLED.values()} >= {"kycstream"}
    assert providers.BROKEN == {}


# --- the kit catches what it is for ---------------------------------------------------------------


def _flawed(normalize: Any, **more: Any) -> types.SimpleNamespace:
    """A provider like xendit but for its normalize (and `more`)."""
    members = {name: getattr(xendit, name) for name in dir(xendit) if not name.startswith("_")}
    return types.SimpleNamespace(**{**members, "NAME": "flawed", "normalize": normalize, **more})


@pytest.fixture
def flawed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    def install(normalize: Any, *case_files: dict[str, Any], **more: Any) -> conformance.Report:
        monkeypatch.setitem(providers.REGISTRY, "flawed", _flawed(normalize, **more))
        for i, case in enumerate(case_files):
            (tmp_path / f"case{i}.json").write_text(json.dumps(case))
        return conformance.run("flawed", tmp_path, fuzz=30)

    yield install


APPROVED = {"body": {"data": {"id": "a-1", "kyc": {"status": "PASSED"}}, "name": "Jane Q Public"}}
PERSONAL = {"body": {"data": {"id": "a-1"}, "fullName": "Jane Q Public"}, "expect": {"status": "APPROVED"}}


def test_the_kit_finds_a_normalizer_that_raises_on_bad_input(flawed: Any) -> None:
    def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
        return Normalized(str(doc["data"]["id"]), VerificationStatus.APPROVED, "x", "flawed:" + doc["data"]["id"])

    report = flawed(normalize, {**APPROVED, "expect": {"status": "APPROVED"}})
    assert [f.check for f in report.findings] == ["fuzz"], report.findings
    assert "normalizer" in report.findings[0].problem


def test_the_kit_finds_a_key_that_is_not_one_per_result(flawed: Any) -> None:
    seen: list[int] = []

    def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
        seen.append(1)
        return Normalized("a-1", VerificationStatus.APPROVED, "x", f"flawed:a-1:{len(seen)}")

    report = flawed(normalize, {**APPROVED, "expect": {"status": "APPROVED"}})
    assert {f.check for f in report.findings} == {"keys"}


def test_the_kit_finds_personal_data_in_an_event_and_a_golden_mismatch(flawed: Any) -> None:
    def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized | Rejection:
        name = str(doc.get("fullName"))
        return Normalized("a-1", VerificationStatus.REJECTED, name, "flawed:a-1")

    report = flawed(normalize, PERSONAL)
    assert {f.check for f in report.findings} >= {"personal", "golden"}
    assert "Jane" not in " ".join(f.problem for f in report.findings), "the kit's report names no personal data"


# --- discovery --------------------------------------------------------------------------------


def _distribution(root: Path, name: str, entry_points: dict[str, str]) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kycstream.test-providers]\n{lines}")


def test_a_broken_plugin_is_reported_by_name_and_the_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kyc_missing_members.py").write_text("NAME = 'half'\n")
    (tmp_path / "kyc_raises.py").write_text("raise RuntimeError('cannot start')\n")
    _distribution(
        tmp_path,
        "kyc_plugins",
        {
            "xendit": "processors.providers.xendit",
            "half": "kyc_missing_members",
            "boom": "kyc_raises",
            "absent": "kyc_no_such_module",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    installed, broken = discover("kycstream.test-providers")
    assert set(installed) == {"xendit"} and installed["xendit"].distribution == "kyc_plugins"
    assert set(broken) == {"half", "boom", "absent"}
    assert "RuntimeError: cannot start" in broken["boom"]
    assert "no DEFAULT_AUTH" in broken["half"] and "normalize is not callable" in broken["half"]
    assert "ModuleNotFoundError" in broken["absent"]


def test_the_kit_checks_the_declared_signing_scheme_against_published_vectors(flawed: Any, tmp_path: Path) -> None:
    """A provider that declares base64 where the provider signs in hex fails on its vectors."""
    body = '{"data": {"id": "a-1"}}'
    hexdigest = hmac.new(b"whsec", body.encode(), hashlib.sha256).hexdigest()
    vectors = [
        {
            "description": "hex, as published",
            "body_text": body,
            "secret": "whsec",
            "headers": {"x-sig": hexdigest},
            "valid": True,
        },
        {
            "description": "tampered",
            "body_text": body + " ",
            "secret": "whsec",
            "headers": {"x-sig": hexdigest},
            "valid": False,
        },
    ]
    (tmp_path / "signatures.json").write_text(json.dumps(vectors))
    case = {**APPROVED, "expect": {"status": "APPROVED"}}

    def normalize(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Normalized:
        return Normalized("a-1", VerificationStatus.APPROVED, "passed", "flawed:a-1")

    right = flawed(normalize, case, DEFAULT_AUTH=signing.Hmac(header="x-sig"))
    assert right.findings == [] and right.passed["signing"] == 1
    wrong = flawed(normalize, case, DEFAULT_AUTH=signing.Hmac(header="x-sig", encoding="base64"))
    assert [f.check for f in wrong.findings] == ["signing"]
    assert "refuses the published vector 'hex, as published'" in wrong.findings[0].problem


def test_personal_values_are_found_under_dashed_names_and_field_types_are_not() -> None:
    body = json.dumps(
        {
            "attributes": {
                "name-first": "Alexandra",
                "email-address": "a.b@example.com",
                "fields": {"birthdate": {"type": "date", "value": "1990-07-14"}},
            }
        }
    ).encode()
    assert conformance.personal_values(body) == {"Alexandra", "a.b@example.com", "1990-07-14"}
