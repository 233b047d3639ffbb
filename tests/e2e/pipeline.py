"""kycstream as a user runs it: `kycstream topics create`, `kycstream gateway`, `kycstream process`.

Each Pipeline has its own copy of deploy/kycstream.dev.yaml, its own topics (KYCSTREAM_TOPICS__*), its
own ports (KYCSTREAM_GATEWAY__PORT, KYCSTREAM_PROCESSOR__METRICS_PORT) and consumer group, so tests
never see each other's records. With an image, each command runs in a container of it (containers.py),
else as a subprocess of the installed CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import yaml

from processors.avro.codec import RecordType
from processors.kafka import embedded, reader, topics
from processors.kafka.serde import Codec
from processors.settings import KafkaSettings, TopicSettings
from tests.conftest import state_table, wait_until
from tests.e2e import containers

REPO = Path(__file__).resolve().parents[2]
DEV_CONFIG = REPO / "deploy" / "kycstream.dev.yaml"


def kycstream_command() -> list[str]:
    """The installed console script, as a user would call it (else the module, same code)."""
    script = Path(sys.executable).with_name("kycstream")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("kycstream")
    return [found] if found else [sys.executable, "-m", "processors.cli"]


class Role:
    """One long-running CLI process (gateway, processor, reconciler); restarts get new log files.
    env: settings of this role only, on top of the pipeline's."""

    def __init__(self, pipeline: Pipeline, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.name = name
        self.args = args
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.pipeline.workdir / f"{self.name}-{self.generation}.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        self.generation += 1
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*kycstream_command(), *self.args, "--config", str(self.pipeline.config_path)],
            env={**self.pipeline.env, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.pipeline.workdir,
        )

    def send(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._closelog()
            raise AssertionError(f"{self.name} did not exit within {timeout:g}s\n{self.tail()}") from None
        self._closelog()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.send(sig)
        return self.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def unreaped(self) -> bool:
        """Started and not waited for (it may have exited by itself)."""
        return self.proc is not None and self._log is not None

    def remove(self) -> None:
        """Whatever the role leaves behind once stopped (nothing for a process)."""

    def _closelog(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        out = []
        for generation in range(1, self.generation + 1):
            path = self.pipeline.workdir / f"{self.name}-{generation}.log"
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)

    def log_events(self, generation: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of one generation (default: the current one)."""
        path = self.pipeline.workdir / f"{self.name}-{generation or self.generation}.log"
        events = []
        for line in path.read_bytes().splitlines():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return events


class ContainerRole(Role):
    """The same role in a container of the product image; its log file is filled from the engine's logs.
    Each start is a new container (the killed one is removed first) with the same bind mounts, so a
    restarted gateway finds its spool and a restarted processor its state directory, as a pod's
    restarted container finds its volumes."""

    def __init__(
        self, pipeline: Pipeline, name: str, args: list[str], image: str, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(pipeline, name, args, env)
        self.image = image
        self.container: Any = None  # testcontainers' DockerContainer of the current generation
        self._waited = False

    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    @property
    def pid(self) -> int | None:  # the host's pid of the container's kycstream process (None once it is gone)
        state = self._state()
        return int(state.get("Pid") or 0) or None if state.get("Running") else None

    def _state(self) -> dict[str, Any]:
        """The current container's state; {} once removed (a sampler thread may ask while it is replaced:
        `self.container` is only ever None or a container the engine started)."""
        import docker.errors

        container = self.container
        if container is None:
            return {}
        wrapped = container.get_wrapped_container()
        try:
            wrapped.reload()
        except docker.errors.NotFound:
            return {}
        except docker.errors.APIError as exc:  # podman: 500 "no such container" while it is being removed
            if "no such container" in str(exc):
                return {}
            raise
        return dict(wrapped.attrs["State"])

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        self.remove()
        self.generation += 1
        self._log = self.log_path.open("wb")
        self._waited = False
        made = self.pipeline.container([*self.args, "--config", str(self.pipeline.config_path)], self.env)
        try:
            made.start()  # create, then start: only then is it this role's container (see _state)
        except Exception:
            made.stop()  # removes what was created, if anything
            super()._closelog()
            raise
        self.container = made

    def send(self, sig: int) -> None:
        assert self.alive(), f"{self.name} is not running"
        self._wrapped().kill(signal=int(sig))

    def wait(self, timeout: float) -> int:
        assert self.container is not None
        try:
            status = self._wrapped().wait(timeout=timeout)["StatusCode"]
        except Exception as exc:  # the engine's read timed out: the container is still running
            self._wrapped().kill()
            self._wrapped().wait(timeout=30)
            self._closelog()
            raise AssertionError(f"{self.name} did not exit within {timeout:g}s\n{self.tail()}") from exc
        self._closelog()
        self._waited = True
        return containers.exit_code(int(status))

    def alive(self) -> bool:
        return self._state().get("Status") in ("created", "running", "restarting", "paused")

    def unreaped(self) -> bool:
        return self.container is not None and not self._waited

    def remove(self) -> None:
        container, self.container = self.container, None  # gone for other threads before it is removed
        if container is not None:
            self._savelog(container)
            container.stop()  # removes it

    def _savelog(self, container: Any = None) -> None:
        container = container or self.container
        if container is not None:
            self.log_path.write_bytes(container.get_wrapped_container().logs())

    def _closelog(self) -> None:
        self._savelog()
        super()._closelog()

    def tail(self, lines: int = 40) -> str:
        if self.container is not None:
            self._savelog()
        return super().tail(lines)

    def log_events(self, generation: int | None = None) -> list[dict[str, Any]]:
        if self.container is not None and generation in (None, self.generation):
            self._savelog()
        return super().log_events(generation)


class Pipeline:
    def __init__(
        self,
        bootstrap: str,
        workdir: Path,
        codec: Codec,
        *,
        partitions: int = 3,
        spool_all: bool = False,
        image: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.codec = codec
        tag = uuid.uuid4().hex[:10]
        self.topics = TopicSettings(partitions=partitions, **{r: f"e2e.{tag}.{r}" for r in topics.ROLES})
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.group = f"e2e-{tag}"  # the processor's consumer group
        self.port = embedded.free_port()
        self.metrics_port = embedded.free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        config = yaml.safe_load(DEV_CONFIG.read_text())
        config["log_format"] = "json"  # the logs are read back by some tests
        config["gateway"]["spool_dir"] = str(workdir / "spool")  # its own, kept across gateway restarts
        # spool_all: every source answers 200 from the spool while Kafka is away; else every source
        # refuses (the dev config spools signicat; the outage tests count refusals).
        for source in config["sources"].values():
            source["on_kafka_unavailable"] = "spool" if spool_all else "refuse"
        self.config_path = workdir / "kycstream.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.image = image
        self.settings = {  # what this pipeline sets; the CLI also inherits the environment
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **{f"KYCSTREAM_TOPICS__{role.upper()}": getattr(self.topics, role) for role in topics.ROLES},
            "KYCSTREAM_TOPICS__PARTITIONS": str(partitions),
            "KYCSTREAM_GATEWAY__PORT": str(self.port),
            "KYCSTREAM_PROCESSOR__METRICS_PORT": str(self.metrics_port),
            "KYCSTREAM_PROCESSOR__GROUP_ID": self.group,
            "KYCSTREAM_PROCESSOR__STATE_DIR": str(workdir / "state"),
            "KYCSTREAM_LOG_LEVEL": "INFO",
        }
        self.env = {**os.environ, **self.settings}
        if image is None:
            self.gateway = Role(self, "gateway", ["gateway"])
            self.processor = Role(self, "processor", ["process"])
        else:
            for writable in ("spool", "state"):  # volumes the container's UID 10001 writes
                (workdir / writable).mkdir(mode=0o777)
                (workdir / writable).chmod(0o777)
            self.gateway = ContainerRole(self, "gateway", ["gateway"], image)
            self.processor = ContainerRole(self, "processor", ["process"], image)
        self.roles: list[Role] = [self.gateway, self.processor]  # stopped, killed and reaped at the end

    def role(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Role:
        """Another long-running role (e.g. `reconcile`), not started: a container of the image like the
        gateway and processor, else a CLI process; stopped and reaped with them at the end of the test."""
        made = Role(self, name, args, env) if self.image is None else ContainerRole(self, name, args, self.image, env)
        self.roles.append(made)
        return made

    def container(self, args: list[str], env: dict[str, str] | None = None) -> Any:
        """A container (not started) of the image running `kycstream ARGS` with this pipeline's settings."""
        assert self.image is not None
        mounts = {self.config_path: "ro", self.workdir / "spool": "rw", self.workdir / "state": "rw"}
        return containers.container(self.image, args, {**self.settings, **(env or {})}, mounts)

    # --- lifecycle ------------------------------------------------------------------------------

    def create_topics(self) -> str:
        args = ["topics", "create", "--config", str(self.config_path)]
        code: int
        out: str
        err: str
        if self.image is not None:
            container = self.container(args).start()
            try:
                wrapped = container.get_wrapped_container()
                code = int(wrapped.wait(timeout=120)["StatusCode"])
                out = wrapped.logs(stdout=True, stderr=False).decode()
                err = wrapped.logs(stdout=False, stderr=True).decode()
            finally:
                container.stop()
        else:
            result = subprocess.run(
                [*kycstream_command(), *args], env=self.env, capture_output=True, timeout=120, cwd=self.workdir
            )
            code, out, err = result.returncode, result.stdout.decode(), result.stderr.decode()
        assert code == 0, f"topics create failed ({code}):\n{out}\n{err}"
        for role in topics.ROLES:
            assert getattr(self.topics, role) in out, out
        return out

    def start_gateway(self, ready_timeout: float = 60) -> None:
        self.gateway.start()
        self.wait_gateway_ready(ready_timeout)

    def readyz(self, timeout: float = 5) -> int:
        """The gateway's /readyz status, 0 when it does not answer."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=timeout).status_code
        except httpx.TransportError:
            return 0

    def wait_gateway_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.gateway.alive(), f"the gateway exited at start\n{self.gateway.tail()}"
            return self.readyz(timeout=3) == 200

        wait_until(ready, timeout, lambda: f"the gateway answered /readyz with 200\n{self.gateway.tail()}")

    def start_processor(self, *, wait_owned: int | None = None, timeout: float = 60) -> None:
        """Start `kycstream process`; with wait_owned, until it owns that many raw partitions."""
        self.processor.start()

        def started() -> bool:
            assert self.processor.alive(), f"the processor exited at start\n{self.processor.tail()}"
            owned = self.processor_metric("kycstream_partitions_owned")
            return owned is not None and (wait_owned is None or owned >= wait_owned)

        wait_until(
            started,
            timeout,
            lambda: f"the processor started owning {wait_owned or 'any'} partitions\n{self.processor.tail()}",
        )

    def processor_metric(self, name: str) -> float | None:
        """Sum of a metric's samples from the processor's /metrics (None while it does not answer)."""
        return _metric(f"http://127.0.0.1:{self.metrics_port}/metrics", name)

    def gateway_metric(self, name: str) -> float | None:
        """Sum of a metric's samples from the gateway's /metrics (None while it does not answer)."""
        return _metric(f"{self.url}/metrics", name)

    def start(self) -> Pipeline:
        self.create_topics()
        self.start_gateway()
        self.start_processor(wait_owned=self.topics.partitions)
        return self

    def stop(self) -> dict[str, int]:
        """SIGTERM what still runs; the return codes of those processes (and of any that had exited)."""
        codes = {}
        for role in self.roles:
            if role.alive():
                codes[role.name] = role.stop(signal.SIGTERM, timeout=40)
            elif role.unreaped():  # exited by itself: a crash, unless 0
                codes[role.name] = role.wait(10)
        return codes

    def kill_all(self) -> None:
        """SIGKILL what still runs; reap everything, close the logs and remove containers (after a failure)."""
        for role in self.roles:
            if role.alive():
                role.send(signal.SIGKILL)
            if role.unreaped():
                role.wait(10)
            role.remove()

    def tails(self) -> str:
        return "\n".join(role.tail() for role in self.roles)

    # --- reading the topics -----------------------------------------------------------------------

    def records(self, role: str) -> list[reader.Record]:
        return reader.read_all(self.kafka, getattr(self.topics, role), timeout=60)

    def decoded(self, role: str) -> list[dict[str, Any]]:
        kind: RecordType = {
            "raw": "RawDelivery",
            "events": "VerificationEvent",
            "state": "VerificationState",
            "dlq": "DeadLetter",
            "dedup": "DedupRecord",
        }[role]  # type: ignore[assignment]
        return [
            self.codec.decode(kind, r.value) | {"_key": r.key, "_partition": r.partition, "_offset": r.offset}
            for r in self.records(role)
            if r.value is not None
        ]

    def latest_states(self) -> dict[str, dict[str, Any]]:
        """The state table as a downstream consumer sees it: the last record per key."""
        return state_table(self.records("state"), self.codec)


# The tightest provider deadline (PRODUCT.md): every answer must come well before it.
SIGNICAT_DEADLINE_S = 10.0


def _metric(url: str, name: str) -> float | None:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.TransportError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gateway_status_ok(code: int) -> bool:
    """uvicorn shuts down gracefully on SIGTERM and then re-raises the signal (uvicorn >= 0.29),
    so a clean gateway exit is 0 or "terminated by SIGTERM"; anything else is a crash."""
    return code in (0, -signal.SIGTERM)
