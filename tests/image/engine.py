"""The container engine that runs the built image in tests: docker where a Docker engine answers,
else podman with the project's deploy/containers.conf (what `make image` builds with)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"
# What `make image` builds (deploy/image.sh); KYCSTREAM_IMAGE names another.
IMAGE = os.environ.get("KYCSTREAM_IMAGE", "kycstream:latest")


@dataclass(frozen=True)
class Engine:
    cli: str  # "docker" or "podman"
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", image, timeout=30).returncode == 0

    def read_only(self) -> list[str]:
        """As readOnlyRootFilesystem with an emptyDir on /tmp (the manifests'): nothing else writable.
        podman would otherwise add writable tmpfs on /tmp, /var/tmp and /run by itself."""
        own_tmpfs = ["--read-only-tmpfs=false"] if self.cli == "podman" else []
        return ["--read-only", *own_tmpfs, "--tmpfs", "/tmp:rw,mode=1777,size=16m"]


def _docker_engine_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{range .Server.Components}}{{.Name}} {{end}}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return False
    # podman's Docker-compatible socket (DOCKER_HOST) answers too: `make image` built with podman then.
    return done.returncode == 0 and bool(done.stdout.strip()) and "Podman" not in done.stdout


def find() -> Engine | None:
    """The engine `make image` would use, or None when neither answers."""
    env = dict(os.environ)
    if _docker_engine_answers(env):
        return Engine("docker", env)
    if shutil.which("podman") is not None:
        return Engine("podman", {**env, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    return None
