"""How the e2e broker is chosen, and how the Docker one is wired (checked without Docker, with a fake
container: the real thing runs wherever an engine answers; see tests/e2e/README.md)."""

from __future__ import annotations

import io
import tarfile
from typing import Any, ClassVar

import pytest
import testcontainers.core.container

from tests.e2e import brokers


def test_the_broker_is_chosen_in_the_documented_order(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    embedded, container = brokers.Broker("embedded", "e:1"), brokers.Broker("testcontainers", "c:1")

    def start_embedded() -> brokers.Broker:
        started.append("embedded")
        return embedded

    def start_containers() -> brokers.Broker:
        started.append("containers")
        return container

    monkeypatch.setattr(brokers, "start_embedded", start_embedded)
    monkeypatch.setattr(brokers, "start_containers", start_containers)
    monkeypatch.delenv("KYCSTREAM_E2E_BROKER", raising=False)  # CI forces the embedded broker

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setattr(brokers, "docker_answers", lambda: True)
    chosen = brokers.choose()
    assert (chosen.kind, chosen.bootstrap, chosen.can_fail) == ("external", "kafka-1:9092,kafka-2:9092", False)
    assert started == []

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    assert brokers.choose() is container and started == ["containers"]
    monkeypatch.setattr(brokers, "docker_answers", lambda: False)
    assert brokers.choose() is embedded
    monkeypatch.setenv("KYCSTREAM_E2E_BROKER", "testcontainers")  # forced: no silent fallback
    assert brokers.choose() is container
    monkeypatch.setattr(brokers, "docker_answers", lambda: True)
    monkeypatch.setenv("KYCSTREAM_E2E_BROKER", "embedded")
    assert brokers.choose() is embedded
    monkeypatch.setenv("KYCSTREAM_E2E_BROKER", "redpanda")
    with pytest.raises(ValueError, match="KYCSTREAM_E2E_BROKER"):
        brokers.choose()


@pytest.mark.parametrize("kafka_pullable", [True, False])
def test_containers_run_the_product_image_and_apache_kafka_where_it_can_be_pulled(
    monkeypatch: pytest.MonkeyPatch, kafka_pullable: bool
) -> None:
    import docker

    class _Image:
        attrs: ClassVar[dict[str, int]] = {"Size": 315_000_000}

    class _Images:
        def get(self, name: str) -> _Image:
            return _Image()

    class _Client:
        images = _Images()

        def close(self) -> None:
            pass

    monkeypatch.setattr(docker, "from_env", lambda **_: _Client())
    available = {brokers.PRODUCT_IMAGE: True, brokers.KAFKA_IMAGE: kafka_pullable}
    monkeypatch.setattr(brokers, "_local_or_pulled", lambda client, image, pull: available.get(image, False))
    monkeypatch.setattr(brokers, "start_kafka_container", lambda image: brokers.Broker("testcontainers", "k:1"))
    monkeypatch.setattr(
        brokers, "start_embedded_container", lambda image: brokers.Broker("testcontainers", "t:1", "tansu")
    )

    broker = brokers.start_containers()
    assert broker.image == brokers.PRODUCT_IMAGE and f"containers of {broker.image} (315 MB," in broker.describe
    if kafka_pullable:
        assert broker.bootstrap == "k:1"
    else:
        assert broker.bootstrap == "t:1" and f"{brokers.KAFKA_IMAGE} could not be pulled" in broker.detail

    available[brokers.PRODUCT_IMAGE] = False  # never a silent fallback to the CLI: build the image
    with pytest.raises(RuntimeError, match="make image"):
        brokers.start_containers()


def test_no_docker_engine_is_detected_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert brokers.docker_answers() is False


class _FakeWrapped:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def put_archive(self, path: str, data: bytes) -> bool:
        self.calls.append(("put_archive", path, data))
        return True

    def stop(self, timeout: int) -> None:
        self.calls.append(("docker stop", timeout))

    def start(self) -> None:
        self.calls.append(("docker start",))


class _FakeContainer:
    instances: ClassVar[list[_FakeContainer]] = []

    def __init__(self, image: str) -> None:
        self.image = image
        self.calls: list[Any] = []
        self.ports: dict[str, int | None] = {}
        self.command: Any = None
        _FakeContainer.instances.append(self)

    def with_bind_ports(self, container: int, host: int) -> _FakeContainer:
        self.ports[str(container)] = host
        return self

    def with_command(self, command: Any) -> _FakeContainer:
        self.command = command
        return self

    def start(self) -> _FakeContainer:
        self.calls.append(("start",))
        return self

    def get_container_host_ip(self) -> str:
        return "docker-host.example"

    def get_wrapped_container(self) -> _FakeWrapped:
        return _FakeWrapped(self.calls)

    def stop(self) -> None:
        self.calls.append(("remove",))


def test_the_kafka_container_is_apache_kafka_in_kraft_mode_advertising_its_published_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(testcontainers.core.container, "DockerContainer", _FakeContainer)
    waited: list[str] = []
    monkeypatch.setattr(brokers, "wait_ready", lambda bootstrap, timeout: waited.append(bootstrap))

    broker = brokers.start_kafka_container("apache/kafka:3.8.0")
    container = _FakeContainer.instances[-1]
    port = container.ports["9092"]
    assert container.image == "apache/kafka:3.8.0" and port
    assert (broker.kind, broker.bootstrap) == ("testcontainers", f"docker-host.example:{port}")
    assert waited == [broker.bootstrap]
    assert "exec bash /tmp/kycstream-e2e-start.sh" in container.command[-1]

    _, path, data = next(c for c in container.calls if c[0] == "put_archive")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("kycstream-e2e-start.sh")
        script = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert path == "/tmp" and member.mode & 0o755 == 0o755
    assert f"export KAFKA_ADVERTISED_LISTENERS='PLAINTEXT://docker-host.example:{port},BROKER://localhost:9093'" in (
        script
    )
    assert "export KAFKA_PROCESS_ROLES='broker,controller'" in script
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")

    with broker.outage():  # real Kafka: the broker is stopped, then started again (same published port)
        assert container.calls[-1] == ("docker stop", 10)
    assert container.calls[-1] == ("docker start",) and waited[-1] == broker.bootstrap
    broker.close()
    assert container.calls[-1] == ("remove",)


def test_kraft_cluster_id_is_a_base64_uuid() -> None:
    import base64

    cluster_id = brokers.kafka_container_env("h", 1)["CLUSTER_ID"]
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
