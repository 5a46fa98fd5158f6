#!/usr/bin/env bash
# make image: build ievnet:<version> from the Dockerfile.
#
#   docker/build_image.sh
#
# With a Docker engine: docker build (BuildKit). Without one: buildah (storage driver vfs,
# chroot isolation: works as root in a VM or container with no daemon) from a local Debian
# bookworm base made by docker/local_base.sh, unless PYTHON_IMAGE names another base.
# Either way, pip in the build uses the host's pip settings (index or mirror, find-links, CA
# bundle, constraints), staged by docker/pip_host_context.py as the build context pip-host and
# mounted for the install step only; when they hold a CPU wheel of the pinned torch, torch is
# taken from there (TORCH_INDEX_URL empty), else from the PyTorch CPU index as documented.
# Variables: see docker/image_lib.sh; TORCH_INDEX_URL and PYTHON_IMAGE are passed on if set;
# IEVNET_IMAGE_DEFER_CLEANUP=1 leaves the deletion of the previous image to the caller.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=image_lib.sh
source "$(dirname "$0")/image_lib.sh"
cd "$repo"

engine="$(image_engine)"
start=$SECONDS

# docker sends build contexts to its daemon: leave local indexes (GB) out there
stage_options=(--torch-version "$torch_version")
[ "$engine" = docker ] && stage_options+=(--no-local-indexes)
summary="$(python3 docker/pip_host_context.py "$cache/pip-host" "${stage_options[@]}")"
echo "build_image: host pip settings for the build: $summary"
torch_wheel="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["torch_wheel"] or "")' \
    "$summary")"

args=(--build-context "pip-host=$cache/pip-host" -t "$tag")
if [ -n "${TORCH_INDEX_URL+set}" ]; then
    args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
elif [ -n "$torch_wheel" ]; then
    args+=(--build-arg TORCH_INDEX_URL=)  # torch from the staged find-links / index
fi

case "$engine" in
    docker)
        [ -n "${PYTHON_IMAGE:-}" ] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
        echo "build_image: docker build ${args[*]} ."
        DOCKER_BUILDKIT=1 docker build "${args[@]}" .
        ;;
    buildah)
        base_start=$SECONDS
        base="${PYTHON_IMAGE:-$(docker/local_base.sh)}"
        echo "build_image: base image $base ($((SECONDS - base_start)) s); buildah storage" \
            "driver $(buildah info --format '{{.store.GraphDriverName}}')"
        args+=(--build-arg "PYTHON_IMAGE=$base")
        echo "build_image: buildah bud ${args[*]} ."
        buildah bud --isolation chroot --layers=false --pull=never "${args[@]}" .
        # the image this tag named before, now untagged: deleted here, or by the caller
        if [ "${IEVNET_IMAGE_DEFER_CLEANUP:-0}" != 1 ]; then
            build_cleanup
        fi
        ;;
    *)
        echo "build_image: unknown IMAGE_ENGINE $engine" >&2
        exit 2
        ;;
esac

size="$(image_size "$engine" "$tag")"
echo "build_image: $tag built with $engine in $((SECONDS - start)) s;" \
    "size $((size / 1000000)) MB (uncompressed)"
