"""Secrets from files, read again when the file changes (rotation without a restart)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from processors.errors import ConfigError
from processors.reconcile.credentials import StaticCredentials
from processors.reconcile.pollsettings import PollSettings
from processors.secretfile import SecretFile
from processors.settings import ProcessorSettings
from tests.conftest import wait_until


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _replace(path: Path, text: str) -> None:
    """As Kubernetes updates a mounted Secret: a new file swapped in atomically."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_changed_file_is_read_again_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "xendit"
    path.write_text("# webhook tokens, one per line\nold-token\n\n")
    clock = _Clock()
    secret = SecretFile(path, clock=clock)
    assert secret.values == ("old-token",)
    _replace(path, "old-token\nnew-token\n")
    clock.now = 0.5
    assert secret.values == ("old-token",), "not looked at again within the second"
    clock.now = 1.0
    assert secret.values == ("old-token", "new-token")
    _replace(path, "new-token\n")
    clock.now = 2.0
    assert secret.values == ("new-token",)


@pytest.mark.parametrize("damage", ["empty", "removed"])
def test_a_file_that_becomes_unusable_keeps_the_last_secrets(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "token"
    path.write_text("s1\n")
    clock = _Clock()
    secret = SecretFile(path, clock=clock)
    if damage == "empty":
        _replace(path, "\n# nothing\n")
    else:
        path.unlink()
    clock.now = 5.0
    assert secret.values == ("s1",)
    _replace(path, "s2\n")
    clock.now = 10.0
    assert secret.values == ("s2",), "and recovers once the file is right again"


def test_a_missing_or_empty_file_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mount it or fix the path"):
        SecretFile(tmp_path / "absent")
    (tmp_path / "empty").write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="holds no secret"):
        SecretFile(tmp_path / "empty")


def test_a_poll_token_file_rotates_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "incode"
    path.write_text("key-1\n")
    settings = PollSettings.model_validate({"base_url": "https://api.incode.example", "token_file": str(path)})
    credentials = StaticCredentials(settings)
    assert asyncio.run(credentials.current()).token == "key-1"
    _replace(path, "key-2\n")
    wait_until(lambda: asyncio.run(credentials.current()).token == "key-2", 5, "the new key in use")


def test_one_api_credential_per_source(tmp_path: Path) -> None:
    base = {"base_url": "https://api.example"}
    with pytest.raises(ValueError, match="token\n  Field required"):
        PollSettings.model_validate(base)
    with pytest.raises(ValueError, match="not token and token_file"):
        PollSettings.model_validate({**base, "token": "t", "token_file": str(tmp_path / "t")})


def test_the_kafka_password_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("p4ss\n")
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    settings = ProcessorSettings.load(None)
    assert settings.kafka.sasl_password is not None and settings.kafka.sasl_password.get_secret_value() == "p4ss"
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD_FILE"):
        ProcessorSettings.load(None)
