#!/usr/bin/env bash
# `make e2e`: tests/e2e, announcing which broker and which pipeline it used (tests/e2e/brokers.py).
#
# Unless KAFKA_BOOTSTRAP_SERVERS is set or KYCSTREAM_E2E_BROKER=embedded, the pipeline runs from the
# product image through testcontainers: `make image` first (docker where an engine answers, else
# podman, installed when missing), and where no Docker-compatible API answers, podman serves one on
# a socket of this run's own (DOCKER_HOST), stopped at the end. Ryuk (testcontainers' reaper) is off
# with podman: its image cannot be pulled everywhere, and the tests remove their own containers.
# When no image can be built (no engine, not root), the pipeline runs as subprocesses of the CLI,
# unless KYCSTREAM_E2E_BROKER=testcontainers asked for containers.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=${KYCSTREAM_E2E_BROKER:-auto}
export KYCSTREAM_E2E=1

docker_api_answers() {
    [[ -n ${DOCKER_HOST:-} || -S /var/run/docker.sock ]] || return 1
    command -v docker > /dev/null 2>&1 || return 1
    timeout 15 docker version --format '{{.Server.Version}}' > /dev/null 2>&1
}

service_pid=""
service_dir=""
stop_service() {
    if [[ -n $service_pid ]]; then
        kill "$service_pid" 2> /dev/null || true
        wait "$service_pid" 2> /dev/null || true
    fi
    [[ -z $service_dir ]] || rm -rf "$service_dir"
}
trap stop_service EXIT

start_podman_service() {
    service_dir=$(mktemp -d /tmp/kycstream-podman.XXXXXX)
    local sock="$service_dir/podman.sock"
    CONTAINERS_CONF="$ROOT/deploy/containers.conf" podman system service --time=0 "unix://$sock" \
        > "$service_dir/service.log" 2>&1 &
    service_pid=$!
    for _ in $(seq 100); do
        [[ -S $sock ]] && break
        sleep 0.1
    done
    [[ -S $sock ]] || { cat "$service_dir/service.log" >&2; echo "podman system service did not start" >&2; return 1; }
    export DOCKER_HOST="unix://$sock" TESTCONTAINERS_RYUK_DISABLED=true
    echo "==> podman serves a Docker-compatible API on $DOCKER_HOST for this run" >&2
}

if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} && $MODE != embedded ]]; then
    if bash deploy/image.sh; then
        docker_api_answers || start_podman_service
    elif [[ $MODE == testcontainers ]]; then
        echo "make e2e: KYCSTREAM_E2E_BROKER=testcontainers, but the image could not be built" >&2
        exit 1
    else
        echo "==> no image could be built: the pipeline runs as subprocesses of the CLI" >&2
    fi
fi

status=0
.venv/bin/pytest -m "${E2E_MARK:-e2e and not slow}" --durations=15 tests/e2e || status=$?
exit "$status"
