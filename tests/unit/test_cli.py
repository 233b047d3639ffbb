"""`kycstream normalize`, offline: the event as JSON and exit 0, or the reason and exit 65."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors import providers
from processors.cli import app
from tests import cases

KYCSTREAM = [sys.executable, "-m", "processors.cli"]


def _normalize(provider: str, body: bytes, *headers: str) -> subprocess.CompletedProcess[bytes]:
    args = [*KYCSTREAM, "normalize", "--provider", provider, "-"]
    for header in headers:
        args += ["--header", header]
    return subprocess.run(args, input=body, capture_output=True, timeout=60)


@pytest.mark.parametrize("case", cases.load(), ids=lambda c: c.id)
def test_normalize_prints_the_event_or_exits_65(case: cases.Case) -> None:
    args = ["normalize", "--provider", case.provider, "-"]
    for name, value in case.headers.items():
        args += ["--header", f"{name}: {value}"]
    result = CliRunner().invoke(app, args, input=case.body)
    if case.dead_letter:
        assert result.exit_code == 65, result.stdout
        assert result.stderr.startswith(f"{case.dead_letter}: ")
        assert result.stdout == ""
    elif case.notice:
        assert result.exit_code == 0, result.stderr
        assert result.stderr.startswith(f"notice: {case.notice} ") and result.stdout == ""
    else:
        assert result.exit_code == 0, result.stderr
        cases.assert_matches(json.loads(result.stdout), case.expect)


def test_normalize_as_a_process() -> None:
    good = _normalize("xendit", b'{"data": {"id": "a", "kyc": {"status": "FAILED"}}}', "webhook-id: w-1")
    assert good.returncode == 0 and json.loads(good.stdout)["status"] == "REJECTED"
    bad = _normalize("metamap", b'{"step": {"status": NumberInt(200)}}')
    assert bad.returncode == 65 and bad.stderr.startswith(b"invalid_json: ")


def test_normalize_reads_a_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "body.json"
    path.write_text('{"submissionId": "s", "status": "COMPLETED", "result": "VALID"}')
    result = subprocess.run(
        [*KYCSTREAM, "normalize", "--provider", "esign", str(path)], capture_output=True, timeout=60
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["status"] == "APPROVED"


def test_normalize_usage_errors_are_clear() -> None:
    unknown = _normalize("nobody", b"{}")
    assert unknown.returncode == 2 and b"unknown provider 'nobody'" in unknown.stderr
    bad_header = _normalize("xendit", b"{}", "no-colon")
    assert bad_header.returncode == 2 and b"must be 'Name: value'" in bad_header.stderr


def test_providers_lists_each_installed_provider_with_the_kit_verdict() -> None:
    result = CliRunner().invoke(app, ["providers"])
    assert result.exit_code == 0, result.output
    for name in ("esign", "signicat", "incode", "metamap", "xendit"):
        assert f"{name}  kycstream " in result.output
    assert result.output.count("kit: passes") == len(providers.INSTALLED)
    assert "fetches: ONBOARDING_FINISHED → score" in result.output


def test_providers_check_exits_1_and_says_why_on_a_failing_case(tmp_path: Path) -> None:
    (tmp_path / "wrong.json").write_text(
        json.dumps({"body": {"data": {"id": "a-1", "kyc": {"status": "PASSED"}}}, "expect": {"status": "REJECTED"}})
    )
    result = CliRunner().invoke(app, ["providers", "check", "xendit", "--cases", str(tmp_path)])
    assert result.exit_code == 1
    assert "golden  xendit/wrong: status: 'APPROVED' != 'REJECTED'" in result.output
    unknown = CliRunner().invoke(app, ["providers", "check", "nosuch"])
    assert unknown.exit_code == 2 and "installed providers: esign" in unknown.output
