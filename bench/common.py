"""Shared pieces of the benchmarks: the machine, the broker, processes, tables and target lines.

Every bench script prints its table and then its `target:` lines; `bench/run.py` (make bench)
runs them all and repeats every target line together at the end.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
OUT = BENCH / ".out"  # logs of the processes under test and each script's results (JSON)


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    versions = []
    for dist in ("confluent-kafka", "uvicorn", "starlette", "uvloop", "httptools", "fastavro", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "packages": ", ".join(versions),
    }


def print_machine() -> None:
    m = machine()
    print(f"machine: {m['cpus']} x {m['cpu']}, {m['memory']}, {m['python']}, Linux {m['kernel']}")
    print(f"         {m['packages']}  ({m['date']})")


# --- ports, processes, the broker ----------------------------------------------------------------


def wait_port(port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def spawn(args: Sequence[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process under test, its output to bench/.out/<log_name>.log, in its own process group."""
    OUT.mkdir(exist_ok=True)
    log = open(OUT / f"{log_name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        list(args),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --- CPU pinning: the server under test on one CPU, its load and its broker on the other ----------

SERVER_CPUS: set[int] = {0}
LOAD_CPUS: set[int] = {1}


def can_pin() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {*SERVER_CPUS, *LOAD_CPUS} <= os.sched_getaffinity(0)


def pinned(args: Sequence[str], cpus: set[int] | None) -> list[str]:
    """`args` run on `cpus` only (taskset; its threads and children inherit it), or as they are."""
    if not cpus:
        return list(args)
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *args]


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process, and of its children, on `cpus`."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    pin(int(child), cpus)


@contextlib.contextmanager
def broker(cpus: set[int] | None = None) -> Iterator[Any]:
    """A fresh embedded broker (Tansu, memory-only) on a free port, on `cpus` if given; stopped (and
    its memory freed) after."""
    from processors.kafka import embedded

    running = embedded.start("127.0.0.1", embedded.free_port())
    if cpus:
        pin(running.process.pid, cpus)
    try:
        yield running
    finally:
        # Kafka clients the phase dropped but that sit in reference cycles are destroyed now, while
        # their broker still answers: otherwise librdkafka logs "Connection refused" for each until
        # the collector happens to run, long after this broker is gone. An Engine that restored
        # partitions froze itself, its producer included (gc.freeze in processors/normalizer/owner.py):
        # unfrozen first (the bench's phases freeze again what they need frozen).
        gc.unfreeze()
        gc.collect()
        running.stop()


@contextlib.contextmanager
def quiet(log_name: str) -> Iterator[Path]:
    """Standard error, Python's and librdkafka's (file descriptor 2), to bench/.out/<log_name>.log
    while an in-process phase runs: the terminal gets the tables, the file the logs."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{log_name}.log"
    sys.stderr.flush()
    saved_fd, saved = os.dup(2), sys.stderr
    with open(path, "w") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = log
        try:
            yield path
        finally:
            log.flush()
            sys.stderr = saved
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def make_topics(bootstrap: str, tag: str, partitions: int) -> Any:
    from processors.kafka import topics
    from processors.settings import KafkaSettings, TopicSettings

    names = {role: f"bench.{tag}.{role}" for role in topics.ROLES}
    settings = TopicSettings(partitions=partitions, **names)
    topics.create_all(KafkaSettings(bootstrap_servers=bootstrap), settings)
    return settings


DEV_CONFIG = ROOT / "deploy" / "kycstream.dev.yaml"


def dev_config() -> dict[str, Any]:
    """deploy/kycstream.dev.yaml (what `make run` runs) as a dict."""
    import yaml

    return dict(yaml.safe_load(DEV_CONFIG.read_text()))


def write_config(
    path: Path,
    bootstrap: str,
    topic_settings: Any,
    port: int,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **gateway: Any,
) -> Path:
    """deploy/kycstream.dev.yaml as shipped (its kafka settings included), on the bench broker and
    topics, JSON logs; `edit` changes the dict before it is written."""
    import yaml

    dev = dev_config()
    dev["log_format"] = "json"
    dev["kafka"] = {**dev.get("kafka", {}), "bootstrap_servers": bootstrap}
    dev["topics"] = topic_settings.model_dump()
    dev["gateway"] = {**dev.get("gateway", {}), "host": "127.0.0.1", "port": port, **gateway}
    dev["processor"] = {**dev.get("processor", {}), "metrics_port": 0}
    if edit is not None:
        edit(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dev))
    return path


# --- latency figures -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


# --- output --------------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    measured: float
    goal: float
    unit: str = ""
    higher_is_better: bool = True
    fmt: str = "{:,.0f}"

    @property
    def met(self) -> bool:
        return self.measured >= self.goal if self.higher_is_better else self.measured <= self.goal

    def line(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        unit = f" {self.unit}" if self.unit else ""
        measured = self.fmt.format(self.measured) + unit
        goal = f"{sign} {self.fmt.format(self.goal)}{unit}"
        return f"target: {self.what} {measured} (goal {goal}) {'met' if self.met else 'not met'}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(cells[0]), sep, *(fmt(r) for r in cells[1:])])


def save(name: str, data: dict[str, Any]) -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))


def finish(targets: Sequence[Target], info: Sequence[str] = ()) -> None:
    print()
    for line in info:
        print(line)
    for t in targets:
        print(t.line())
    sys.stdout.flush()
