"""A governed schema registry, over real HTTP against a stand-in (tests/registry.py): `kycstream
schemas register [--check]`, subject names by strategy, the internal topics kept registry-free,
a role that refuses to start without its subjects, credentials from files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from processors.cli import app
from processors.errors import BrokerError, ConfigError
from processors.kafka import config, registry
from processors.kafka.serde import Codec
from processors.settings import ProcessorSettings
from tests.conftest import serving_app
from tests.registry import Registry

USER = ("kycstream-ci", "registry-password")


@pytest.fixture
def stand_in() -> Iterator[tuple[Registry, str]]:
    standing = Registry(basic=USER)
    with serving_app(standing.app()) as url:
        yield standing, url


def config_file(tmp_path: Path, url: str, **kafka: Any) -> Path:
    (tmp_path / "user-info").write_text(":".join(USER) + "\n")
    kafka = {"schema_registry_url": url, "schema_registry_basic_auth_file": str(tmp_path / "user-info"), **kafka}
    path = tmp_path / "kycstream.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka}))
    return path


def kycstream(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_schemas_register_checks_then_registers_and_refuses_an_incompatible_change(
    stand_in: tuple[Registry, str], tmp_path: Path
) -> None:
    standing, url = stand_in
    strategy = {"schema_registry_subject_name_strategy": "topic_record"}
    path = config_file(tmp_path, url, **strategy, schema_registry_internal_topics="single_object")
    expected = {
        "kyc.webhooks.raw.v1-kycstream.RawDelivery",
        "kyc.verification.events.v1-kycstream.VerificationEvent",
        "kyc.webhooks.dlq.v1-kycstream.DeadLetter",
    }  # no subject for the dedup, state and expected topics: they stay registry-free

    checked = kycstream("schemas", "register", "--check", "--config", str(path))
    assert checked.exit_code == 0, checked.output
    assert {line.split()[1] for line in checked.stdout.splitlines()} == expected
    assert all(line.startswith("new ") for line in checked.stdout.splitlines())
    assert standing.registrations() == [] and standing.subjects == {}

    registered = kycstream("schemas", "register", "--config", str(path))
    assert registered.exit_code == 0, registered.output
    assert set(standing.subjects) == expected
    ids = {line.split()[1]: int(line.split()[-3]) for line in registered.stdout.splitlines()}
    assert ids == {subject: versions[0] for subject, versions in standing.subjects.items()}

    again = kycstream("schemas", "register", "--check", "--config", str(path))
    assert again.exit_code == 0 and all(line.startswith("compatible ") for line in again.stdout.splitlines())

    # Someone registered a version kycstream's schema cannot read (event_id a long): the check says so.
    events = "kyc.verification.events.v1-kycstream.VerificationEvent"
    other = json.loads(standing.ids[standing.subjects[events][0]])
    other["fields"] = [f | {"type": "long"} if f["name"] == "event_id" else f for f in other["fields"]]
    standing.add(events, json.dumps(other))
    before = len(standing.registrations())
    refused = kycstream("schemas", "register", "--config", str(path))
    assert refused.exit_code == 1
    assert f"incompatible {events}" in refused.stdout and "nothing registered" in refused.stderr
    assert len(standing.registrations()) == before


def test_a_role_without_auto_register_refuses_to_start_naming_the_missing_subject(
    stand_in: tuple[Registry, str], tmp_path: Path
) -> None:
    standing, url = stand_in
    settings = ProcessorSettings.load(config_file(tmp_path, url, schema_registry_auto_register=False))
    codec = Codec(config.schema_registry(settings.kafka))
    writes = registry.writes(settings.topics, "VerificationEvent", "DeadLetter")
    standing.add("kyc.webhooks.dlq.v1-value", json.dumps(codec.schema_json("DeadLetter")))
    with closing(codec), pytest.raises(ConfigError) as raised:
        registry.require(codec, writes)
    message = str(raised.value)
    assert "subject kyc.verification.events.v1-value (VerificationEvent on kyc.verification.events.v1)" in message
    assert "dlq" not in message and "`kycstream schemas register`" in message
    assert standing.registrations() == []


def test_wrong_registry_credentials_are_named_as_such(stand_in: tuple[Registry, str], tmp_path: Path) -> None:
    standing, url = stand_in
    path = config_file(tmp_path, url, schema_registry_auto_register=False)
    (tmp_path / "user-info").write_text("kycstream-ci:wrong\n")
    settings = ProcessorSettings.load(path)
    with closing(Codec(config.schema_registry(settings.kafka))) as codec, pytest.raises(BrokerError) as raised:
        registry.require(codec, registry.writes(settings.topics))
    assert "answered 401" in str(raised.value) and "credentials" in str(raised.value)
    assert standing.refused > 0


def test_a_bearer_token_from_a_file_reaches_the_registry(tmp_path: Path) -> None:
    standing = Registry(bearer="registry-token")
    (tmp_path / "token").write_text("registry-token\n")
    with serving_app(standing.app()) as url:
        k = ProcessorSettings(
            kafka={"schema_registry_url": url, "schema_registry_bearer_token_file": str(tmp_path / "token")}
        ).kafka
        with closing(Codec(config.schema_registry(k))) as codec:
            data = codec.encode("VerificationState", _state(), "states")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == standing.subjects["states-value"][0]
    assert standing.refused == 0


def test_internal_topics_single_object_keeps_them_off_the_registry() -> None:
    registry_conf = config.Registry({"url": "mock://kycstream-internal"}, internal_topics="single_object")
    codec = Codec(registry_conf)
    assert codec.encode("VerificationState", _state(), "states")[:2] == b"\xc3\x01"
    assert codec.encode("VerificationEvent", _event(), "events")[0] == 0
    assert codec.single_object_for("DedupRecord") and not codec.single_object_for("RawDelivery")


def _state() -> dict[str, Any]:
    from tests.unit.test_serde import OBJECTS

    return next(to_record(obj) for kind, obj, to_record, _ in OBJECTS if kind == "VerificationState")


def _event() -> dict[str, Any]:
    from tests.unit.test_serde import OBJECTS

    return next(to_record(obj) for kind, obj, to_record, _ in OBJECTS if kind == "VerificationEvent")
