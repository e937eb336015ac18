#!/usr/bin/env bash
# Builds the sealstore image without any registry: a Debian base from debootstrap, wheels
# downloaded on the host from the pinned lock file, then `docker build`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
base=${SEALSTORE_BASE_IMAGE:-local/sealstore-base:bookworm}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  # The Debian mirror apt already uses on this host (no other registry is reachable).
  mirror=${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2}' | grep -m1 '/debian/\?$' || true)}
  if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb .*debian/{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
  tar -C "$rootfs" -c . | docker import - "$base"
  rm -rf "$rootfs"
fi
mkdir -p deploy/docker/wheels
.venv/bin/pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d deploy/docker/wheels -r requirements.lock setuptools
docker build --network=host -f deploy/docker/Dockerfile --build-arg BASE="$base" -t sealstore:dev .
