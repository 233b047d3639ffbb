"""Containers of the product image (`make image`), through testcontainers, run as the Kubernetes
manifests run them: read-only root filesystem, UID/GID 10001, every capability dropped, no new
privileges, only /tmp (and the volumes given) writable.

They share the host's network: the broker (or the TCP proxy in front of it), the gateway's port and
the processor's metrics are all on 127.0.0.1, the only addresses these tests may send traffic to.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

# What `make e2e` built with `make image` (podman names a local image localhost/...).
DEFAULT_IMAGE = "kycstream:latest"
USER = "10001:10001"  # runAsUser/runAsGroup in deploy/base/


def run_options() -> dict[str, Any]:
    """docker-py `containers.create` options matching the manifests' securityContext."""
    return {
        "network_mode": "host",
        "user": USER,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
    }


def container(image: str, args: list[str], env: dict[str, str], mounts: dict[Path, str]) -> Any:
    """A DockerContainer (not started) of `image` with `args`; mounts: host path -> "ro" or "rw",
    mounted at the same path so the config can name them as the host sees them."""
    from testcontainers.core.container import DockerContainer

    made = DockerContainer(image).with_command(args).with_kwargs(**run_options())
    made.tmpfs["/tmp"] = "rw,size=16m,mode=1777"  # the manifests' emptyDir on /tmp
    for key, value in env.items():
        made.with_env(key, value)
    for path, mode in mounts.items():
        made.with_volume_mapping(str(path), str(path), mode)
    return made


def exit_code(status: int) -> int:
    """A container's exit status the way subprocess reports a process's: killed by signal N -> -N."""
    if status > 128 and status - 128 in {s.value for s in signal.Signals}:
        return -(status - 128)
    return status
