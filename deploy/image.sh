#!/usr/bin/env bash
# `make image`: build the Dockerfile into $IMAGE (default kycstream:latest), then print its size and
# how long the build took. Idempotent: a second run reuses the base and the engine's layer cache.
#
#   engine  docker when a Docker engine answers (podman's Docker-compatible socket does not count);
#           else podman, installed from Debian's packages when missing (root only), always run with
#           deploy/containers.conf through CONTAINERS_CONF so the machine's own config is untouched.
#   base    $BASE_IMAGE (default python:3.11-slim-bookworm) when the engine has it or can pull it;
#           else a stand-in, $STANDIN_BASE: Debian bookworm with Python 3.11 from Debian's packages,
#           made once with debootstrap and imported (said loudly: it is not the official image).
#
# Environment: IMAGE, BASE_IMAGE, STANDIN_BASE, ENGINE (auto|docker|podman), BUILD_FLAGS (extra
# flags for the build), DEBIAN_MIRROR (default: the one apt uses).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-kycstream:latest}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
STANDIN_BASE=${STANDIN_BASE:-localhost/kycstream-base:bookworm}
ENGINE=${ENGINE:-auto}
export CONTAINERS_CONF="$ROOT/deploy/containers.conf"  # read by podman only

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'make image: %s\n' "$*" >&2; exit 1; }

docker_engine_answers() {
    command -v docker > /dev/null 2>&1 || return 1
    local names
    names=$(timeout 15 docker version --format '{{range .Server.Components}}{{.Name}} {{end}}' 2> /dev/null) \
        || return 1
    [[ -n $names && $names != *Podman* ]]
}

apt_install() {  # apt_install PACKAGE...: Debian packages, as root
    [[ $(id -u) == 0 ]] || die "needs $* (Debian packages) and only root can install them: apt-get install -y $*"
    say "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" > /dev/null \
        || { apt-get update -qq && apt-get install -y -qq "$@" > /dev/null; } \
        || die "apt-get install $* failed"
}

choose_engine() {
    case $ENGINE in
        docker | podman) ;;
        auto) if docker_engine_answers; then ENGINE=docker; else ENGINE=podman; fi ;;
        *) die "ENGINE must be auto, docker or podman (not $ENGINE)" ;;
    esac
    if [[ $ENGINE == podman ]] && ! { command -v podman && command -v runc; } > /dev/null 2>&1; then
        apt_install podman runc debootstrap
    fi
}

qualified() {  # docker's implicit registry made explicit: podman refuses to guess one for a short name
    local name=$1 first=${1%%/*}
    if [[ $name != */* ]]; then
        echo "docker.io/library/$name"
    elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then
        echo "$name"
    else
        echo "docker.io/$name"
    fi
}

has_image() { "$ENGINE" image inspect "$1" > /dev/null 2>&1; }

debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2> /dev/null || true)
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2> /dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_standin() {
    command -v debootstrap > /dev/null 2>&1 || apt_install debootstrap
    [[ $(id -u) == 0 ]] || die "debootstrap needs root to build the stand-in base $STANDIN_BASE"
    local rootfs mirror started=$SECONDS
    rootfs=$(mktemp -d /var/tmp/kycstream-base.XXXXXX)
    # debootstrap mounts /proc and /sys inside while it works: unmount before removing anything.
    # shellcheck disable=SC2064
    trap "grep -o ' $rootfs/[^ ]*' /proc/mounts | sort -r | xargs -r umount -l; rm -rf --one-file-system '$rootfs'" EXIT
    mirror=$(debian_mirror)
    say "building the stand-in base $STANDIN_BASE: debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
        > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
    rm -f "$rootfs.log"
    ln -sf python3 "$rootfs/usr/bin/python"  # the Dockerfile, like the official image, calls `python`
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    tar -C "$rootfs" --numeric-owner -cf - . \
        | "$ENGINE" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
            --message "kycstream stand-in base: debootstrap --variant=minbase bookworm + python3, python3-venv" \
            - "$STANDIN_BASE" > /dev/null
    say "stand-in base $STANDIN_BASE built in $((SECONDS - started)) s"
}

choose_base() {  # prints the base to build on
    local real
    real=$(qualified "$BASE_IMAGE")
    if has_image "$real"; then echo "$real"; return; fi
    say "pulling $real"
    local err
    if err=$(timeout 600 "$ENGINE" pull "$real" 2>&1 > /dev/null); then echo "$real"; return; fi
    say "cannot pull $real: $(tail -1 <<< "$err")"
    say "USING A STAND-IN BASE, not the official image: $STANDIN_BASE (Debian bookworm's own Python 3.11)"
    has_image "$STANDIN_BASE" || build_standin
    echo "$STANDIN_BASE"
}

choose_engine
base=$(choose_base)
flags=(--build-arg "BASE_IMAGE=$base" --label "org.opencontainers.image.base.name=$base" --tag "$IMAGE")
if [[ $ENGINE == podman ]]; then
    # Host networking and the host's CA certificates: pip inside the build then reaches the package
    # index exactly as the host does (behind a TLS-inspecting proxy too); neither ends up in the image.
    flags+=(--network host --volume /etc/ssl/certs:/etc/ssl/certs:ro)
fi
# shellcheck disable=SC2206
flags+=(${BUILD_FLAGS:-})
say "$ENGINE build $IMAGE on $base"
previous=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2> /dev/null || true)
started=$(date +%s.%N)
"$ENGINE" build "${flags[@]}" --file "$ROOT/Dockerfile" "$ROOT" >&2
# The image this build replaced, now untagged: its top layer (the virtualenv, ~150 MB) would pile up.
if [[ -n $previous && $previous != "$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    "$ENGINE" rmi "$previous" > /dev/null 2>&1 || true  # still used by a container: left alone
fi
seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
printf 'image: %s (%s) on %s, %s MB, built in %s s\n' \
    "$IMAGE" "$ENGINE" "$base" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" "$seconds"
