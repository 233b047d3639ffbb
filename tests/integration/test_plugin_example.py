"""An external provider, installed as its own distribution (examples/kycstream-provider-acme), used
with no change to kycstream but a `sources:` entry: a signed webhook through the real gateway
becomes its event through the real processor, both run as `kycstream` processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from processors import providers
from processors.kafka import embedded
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import committed_to_end, post, processor_env, read, unique, wait_until

pytestmark = pytest.mark.broker
REPO = Path(__file__).parents[2]
EXAMPLE = REPO / "examples" / "kycstream-provider-acme"
KYCSTREAM = [sys.executable, "-m", "processors.cli"]


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed as a separate distribution (its own dist-info and entry point), in a
    folder the kycstream processes get on their PYTHONPATH: the test's own venv is left alone."""
    site = tmp_path_factory.mktemp("acme-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(EXAMPLE)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert list(site.glob("kycstream_provider_acme-*.dist-info")), "installed as its own distribution"
    return site


def _env(kafka: KafkaSettings, topics: TopicSettings, site: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return processor_env(kafka, topics, PYTHONPATH=path, **extra)


@contextmanager
def _running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen([*KYCSTREAM, *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_installed_external_provider_receives_a_signed_webhook_and_makes_its_event(
    acme_site: Path, kafka: KafkaSettings, topic_settings: TopicSettings, codec: Codec, tmp_path: Path
) -> None:
    config = tmp_path / "kycstream.yaml"
    config.write_text("sources:\n  acme:\n    provider: acme\n    auth: {credentials: [acme-secret]}\n")
    port, group = embedded.free_port(), unique("proc")
    env = _env(
        kafka,
        topic_settings,
        acme_site,
        KYCSTREAM_CONFIG=str(config),
        KYCSTREAM_GATEWAY__PORT=str(port),
        KYCSTREAM_PROCESSOR__GROUP_ID=group,
    )
    listed = subprocess.run([*KYCSTREAM, "providers"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "acme  kycstream-provider-acme 0.1.0  (kycstream_acme)" in listed.stdout
    assert listed.stdout.count("kit: passes") == len(providers.INSTALLED) + 1, listed.stdout  # ours and acme

    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"type": "verification.finished", "verification": {"id": "av_e2e", "outcome": "pass"}}).encode()
    signature = "sha256=" + hmac.new(b"acme-secret", body, hashlib.sha256).hexdigest()
    with (
        _running(["gateway"], env, tmp_path / "gateway.log") as gateway,
        _running(["process"], env, tmp_path / "process.log"),
    ):
        wait_until(lambda: _answers(f"{url}/healthz") or gateway.poll() is not None, 60, "the gateway answers")
        assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
        tampered = post(f"{url}/webhooks/acme", body.replace(b"pass", b"fail"), {"x-acme-signature": signature})
        assert tampered.status_code == 401, tampered.text
        accepted = post(f"{url}/webhooks/acme", body, {"x-acme-signature": signature})
        assert accepted.status_code == 200, accepted.text
        # Its legacy URL: the route names the kind (ROUTES), no type in the body.
        routed = json.dumps({"verification": {"id": "av_routed", "outcome": "fail"}}).encode()
        routed_signature = "sha256=" + hmac.new(b"acme-secret", routed, hashlib.sha256).hexdigest()
        unknown = post(f"{url}/webhooks/acme/started", routed, {"x-acme-signature": routed_signature})
        assert unknown.status_code == 404 and "/webhooks/acme/finished" in unknown.text, unknown.text
        answer = post(f"{url}/webhooks/acme/finished", routed, {"x-acme-signature": routed_signature})
        assert answer.status_code == 200, answer.text
        wait_until(lambda: committed_to_end(kafka, group, topic_settings.raw), 60, "the processor took the delivery")
    events = read(kafka, topic_settings.events, codec, "VerificationEvent")
    assert sorted((e["provider"], e["verification_id"], e["status"]) for e in events) == [
        ("acme", "av_e2e", "APPROVED"),
        ("acme", "av_routed", "REJECTED"),
    ]
    assert len(read(kafka, topic_settings.raw, codec, "RawDelivery")) == 2, "the refused ones never reached Kafka"
