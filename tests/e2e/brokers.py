"""The broker an end-to-end run uses, chosen in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set: a Kafka you run (its outage test is skipped: we cannot stop it);
2. containers, through testcontainers, when a Docker-compatible API answers (Docker, or the podman
   socket `make e2e` starts): the pipeline then runs from the product image (``KYCSTREAM_E2E_IMAGE``,
   what `make image` built), and the broker is a throwaway Apache Kafka (``apache/kafka``, KRaft,
   single node) where that image can be pulled, else the product image's own embedded broker in a
   container, behind a TCP proxy on the host (as in 3);
3. the embedded broker (Tansu) as a subprocess, behind a TCP proxy that is advertised as its
   listener, so a test can cut the link (the embedded broker is memory-only: stopping it would lose
   the data).

``KYCSTREAM_E2E_BROKER=embedded|testcontainers`` forces 2 or 3 (CI forces ``testcontainers``); with
``testcontainers`` and no engine the run fails instead of falling back.
``KYCSTREAM_E2E_KAFKA_IMAGE`` picks the Kafka image (default ``apache/kafka:3.8.0``).
"""

from __future__ import annotations

import gc
import io
import os
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.kafka import embedded
from tests.conftest import wait_until
from tests.e2e import containers
from tests.tcpproxy import TcpProxy

KAFKA_IMAGE = os.environ.get("KYCSTREAM_E2E_KAFKA_IMAGE", "apache/kafka:3.8.0")
PRODUCT_IMAGE = os.environ.get("KYCSTREAM_E2E_IMAGE", containers.DEFAULT_IMAGE)
_START_SCRIPT = "/tmp/kycstream-e2e-start.sh"


@dataclass
class Broker:
    kind: str  # "external", "testcontainers" or "embedded"
    bootstrap: str
    detail: str = ""
    proxy: TcpProxy | None = None  # embedded broker only: the link tests may cut or slow down
    image: str | None = None  # the product image the pipeline runs from (containers), else the CLI
    image_mb: float | None = None  # its size, for the summary
    _down: Callable[[], None] | None = None
    _up: Callable[[], None] | None = None
    _close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def describe(self) -> str:
        described = f"{self.kind} {self.bootstrap}" + (f" ({self.detail})" if self.detail else "")
        size = f"{self.image_mb:.0f} MB, " if self.image_mb else ""
        pipeline = (
            f"containers of {self.image} ({size}read-only root, UID 10001)" if self.image else "the CLI as subprocesses"
        )
        return f"{described}; pipeline: {pipeline}"

    @property
    def can_fail(self) -> bool:
        return self._down is not None

    @property
    def outage_kind(self) -> str:
        if self.proxy is not None:
            return "link cut at the TCP proxy"
        return "broker container stopped" if self.kind == "testcontainers" else "none"

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Kafka unreachable inside the block; back (and answering) when it ends."""
        assert self._down is not None and self._up is not None, f"cannot take a {self.kind} broker down"
        self._down()
        try:
            yield
        finally:
            self._up()
            wait_ready(self.bootstrap, 120)

    def close(self) -> None:
        for close in reversed(self._close):
            close()


def choose() -> Broker:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        servers = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return Broker("external", servers, "from KAFKA_BOOTSTRAP_SERVERS")
    forced = os.environ.get("KYCSTREAM_E2E_BROKER", "auto")
    if forced not in ("auto", "embedded", "testcontainers"):
        raise ValueError(f"KYCSTREAM_E2E_BROKER={forced!r}: use auto, embedded or testcontainers")
    if forced == "testcontainers" or (forced == "auto" and docker_answers()):
        return start_containers()
    return start_embedded()


def start_containers() -> Broker:
    """The pipeline from the product image; the broker from Apache Kafka's image if it can be had,
    else from the product image (its embedded broker)."""
    import docker

    client = docker.from_env(timeout=120)
    try:
        # podman keeps a locally built image as localhost/NAME; Docker as NAME.
        names = [PRODUCT_IMAGE] + ([f"localhost/{PRODUCT_IMAGE}"] if "/" not in PRODUCT_IMAGE else [])
        image = next((name for name in names if _local_or_pulled(client, name, pull=False)), None)
        if image is None:
            raise RuntimeError(f"no image {PRODUCT_IMAGE}: run `make image` (KYCSTREAM_E2E_IMAGE names another)")
        image_mb = client.images.get(image).attrs["Size"] / 1e6
        kafka = _local_or_pulled(client, KAFKA_IMAGE, pull=True)
    finally:
        client.close()
    if kafka:
        broker = start_kafka_container(KAFKA_IMAGE)
    else:
        broker = start_embedded_container(image)
        broker.detail += f"; {KAFKA_IMAGE} could not be pulled"
    broker.image, broker.image_mb = image, image_mb
    return broker


def _local_or_pulled(client: Any, image: str, *, pull: bool) -> bool:
    import docker.errors

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        pass
    if not pull:
        return False
    try:
        client.images.pull(image)
        return True
    except docker.errors.APIError:  # no registry reachable (or no such image): say so, use the fallback
        return False


def docker_answers() -> bool:
    """Whether a Docker engine answers a ping (DOCKER_HOST, else the default socket)."""
    with warnings.catch_warnings():
        # A failed docker.from_env() leaves its socket to the garbage collector: not our leak to report.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # no SDK, no socket, no permission, engine down: no Docker
            return False
        finally:
            gc.collect()


def start_embedded() -> Broker:
    port = embedded.free_port()
    proxy = TcpProxy("127.0.0.1", port).start()
    try:
        running = embedded.start("127.0.0.1", port, advertised_port=proxy.port)
    except BaseException:
        proxy.close()
        raise
    broker = Broker(
        "embedded",
        running.bootstrap_servers,  # the proxy's address: every client connection goes through it
        f"Tansu on 127.0.0.1:{port}, advertised through a TCP proxy",
        proxy=proxy,
        _down=proxy.cut,
        _up=proxy.restore,
    )
    broker._close += [running.stop, proxy.close]
    return broker


def start_embedded_container(image: str) -> Broker:
    """The embedded broker (Tansu, shipped in the product image) in a container of that image,
    behind a TCP proxy on the host like the subprocess one: memory-only, so its outage is a cut link."""
    port = embedded.free_port()
    proxy = TcpProxy("127.0.0.1", port).start()
    script = (
        "from processors.kafka import embedded; "
        f"embedded.start('127.0.0.1', {port}, advertised_port={proxy.port}, output=None).process.wait()"
    )
    container = containers.container(image, ["-c", script], {}, {})
    container.with_kwargs(**containers.run_options(), entrypoint=["python"])
    try:
        container.start()
    except BaseException:
        proxy.close()
        raise
    broker = Broker(
        "testcontainers",
        f"127.0.0.1:{proxy.port}",
        f"the embedded broker (Tansu) in a container of {image}, on 127.0.0.1:{port} behind a TCP proxy",
        proxy=proxy,
        _down=proxy.cut,
        _up=proxy.restore,
    )
    broker._close += [container.stop, proxy.close]
    try:
        wait_ready(broker.bootstrap, 60)
    except BaseException:
        broker.close()
        raise
    return broker


def kafka_container_env(advertised_host: str, host_port: int) -> dict[str, str]:
    """Single-node KRaft settings for the apache/kafka image (read by its /etc/kafka/docker/configure).

    PLAINTEXT is the clients' listener (container port 9092, published on `host_port` and advertised as
    advertised_host:host_port); BROKER is the broker's own listener; CONTROLLER is the KRaft quorum.
    """
    return {
        "CLUSTER_ID": "a3ljc3RyZWFtLWUyZS0wMQ",  # base64url of 16 bytes, as KRaft wants
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised_host}:{host_port},BROKER://localhost:9093",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }


def start_script(advertised_host: str, host_port: int) -> bytes:
    """Run by the container (again on every `docker start`): env, then the image's own entry point."""
    lines = ["#!/bin/bash", "set -e"]
    lines += [f"export {k}='{v}'" for k, v in kafka_container_env(advertised_host, host_port).items()]
    lines.append("exec /etc/kafka/docker/run")
    return ("\n".join(lines) + "\n").encode()


def start_kafka_container(image: str) -> Broker:
    """apache/kafka in KRaft mode through testcontainers' generic DockerContainer.

    testcontainers' KafkaContainer is not used: in testcontainers 4.x it boots Confluent images only
    (its start script runs /etc/confluent/docker/*, and with_kraft() refuses tags below 7.0.0, so
    "apache/kafka:3.8.0" fails). As testcontainers does for its own images, the container waits for a
    start script that is copied in once the host address is known. The published port is fixed (a free
    host port chosen here), so the advertised listener stays right across a container stop/start.
    """
    from testcontainers.core.container import DockerContainer

    host_port = embedded.free_port("0.0.0.0")
    container = (
        DockerContainer(image)
        .with_bind_ports(9092, host_port)
        .with_command(["bash", "-c", f"while [ ! -f {_START_SCRIPT} ]; do sleep 0.1; done; exec bash {_START_SCRIPT}"])
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        script = start_script(host, host_port)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(_START_SCRIPT.rsplit("/", 1)[1])
            info.size, info.mode, info.mtime = len(script), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(script))
        container.get_wrapped_container().put_archive(_START_SCRIPT.rsplit("/", 1)[0], archive.getvalue())
        bootstrap = f"{host}:{host_port}"
        wait_ready(bootstrap, 120)
    except BaseException:
        container.stop()
        raise

    def down() -> None:
        container.get_wrapped_container().stop(timeout=10)

    def up() -> None:
        container.get_wrapped_container().start()

    broker = Broker("testcontainers", bootstrap, f"{image}, KRaft, single node", _down=down, _up=up)
    broker._close.append(container.stop)
    return broker


def wait_ready(bootstrap: str, timeout: float) -> None:
    """Until the broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def answers() -> bool:
        try:
            return bool(admin.list_topics(timeout=2.0).brokers)
        except KafkaException:
            return False

    wait_until(answers, timeout, f"Kafka at {bootstrap} answered a metadata request", every=0.3)
