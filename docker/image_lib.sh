# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared by docker/build_image.sh and docker/image_test.sh (sourced, not run).
#
# Environment:
#   IMAGE_ENGINE        docker or buildah (default: docker when a Docker engine answers, else
#                       buildah)
#   IMAGE_TAG           image name (default: ievnet:<version of pyproject.toml>)
#   IEVNET_IMAGE_CACHE  cache folder: base root file system, staged pip settings, test runs
#                       (default: ~/.cache/ievnet-image)
#   STORAGE_DRIVER      buildah's storage driver (read by buildah itself; default: its storage
#                       configuration, else the first that works here: overlay on ext4/xfs, vfs
#                       where overlay mounts are impossible, e.g. on an overlayfs root; vfs
#                       keeps full copies: slower, larger)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)"
torch_version="$(sed -n 's/^ *"torch==\([^"]*\)",$/\1/p' "$repo/pyproject.toml" | head -n 1)"
tag="${IMAGE_TAG:-ievnet:$version}"
cache="${IEVNET_IMAGE_CACHE:-$HOME/.cache/ievnet-image}"

image_engine() {
    if [ -n "${IMAGE_ENGINE:-}" ]; then
        echo "$IMAGE_ENGINE"
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v buildah >/dev/null 2>&1; then
        echo buildah
    else
        echo "no Docker engine and no buildah: install one (apt-get install buildah debootstrap)" >&2
        return 1
    fi
}

# Size of an image in bytes, uncompressed (what `docker images` shows).
image_size() {
    case "$1" in
        docker) docker image inspect --format '{{.Size}}' "$2" ;;
        buildah) buildah inspect --type image --format '{{.Manifest}}' "$2" |
            python3 -c 'import json, sys
print(sum(layer["size"] for layer in json.load(sys.stdin)["layers"]))' ;;  # uncompressed
    esac
}

# The image the tag named before a buildah build: untagged by the build, deleted here. That
# takes minutes on a disk mounted with `discard` (about 2 GB of files), so `make image-test`
# (IEVNET_IMAGE_DEFER_CLEANUP=1) does it while the source install runs. (The build's stage
# containers are deleted by buildah bud itself; 1.28 does so even with --rm=false.)
build_cleanup() {
    buildah rmi --prune >/dev/null 2>&1 || true
}
