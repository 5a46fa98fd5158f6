#!/usr/bin/env bash
# Make sure `make image` / `make image-test` can build and run the image: a Docker engine that
# answers, or buildah and debootstrap (installed here with apt-get when missing; needs root or
# password-less sudo). Exits non-zero when neither is possible.
set -euo pipefail

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    exit 0  # a Docker engine
fi
if command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_tools: no Docker engine, no buildah/debootstrap and no apt-get" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure_tools: installing buildah and debootstrap with apt-get" >&2
if ! "${sudo[@]}" apt-get install -y -q buildah debootstrap >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q buildah debootstrap >/dev/null
fi
echo "ensure_tools: $(buildah --version), debootstrap $(dpkg-query -W -f '${Version}' debootstrap)" >&2
