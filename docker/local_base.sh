#!/usr/bin/env bash
# A local Debian bookworm base image for buildah, for machines without Docker Hub:
#
#   docker/local_base.sh            # prints the image name, e.g. localhost/ievnet-base:bookworm-...
#
# debootstrap (variant minbase, from the Debian mirror apt uses here) with python3 (3.11 on
# bookworm, like python:3.11-slim-bookworm), python3-venv, passwd (useradd) and
# ca-certificates; the root file system is kept as a tarball in the cache folder and imported
# with a two-line Containerfile (FROM scratch + ADD). Both are made once: the image is reused
# while it is in buildah's storage, the tarball when the image is not (e.g. after
# `buildah rmi --all`). Needs root, debootstrap and buildah.
#
# Environment:
#   IEVNET_IMAGE_CACHE  cache folder (default: ~/.cache/ievnet-image)
#   DEBIAN_MIRROR       Debian mirror (default: the first bookworm one in apt's sources, else
#                       http://deb.debian.org/debian)
#   STORAGE_DRIVER      buildah's storage driver (see docker/image_lib.sh)
set -euo pipefail

suite=bookworm
packages=python3,python3-venv,passwd,ca-certificates
cache="${IEVNET_IMAGE_CACHE:-$HOME/.cache/ievnet-image}"
# the name changes with the recipe, so that a changed package list builds a new base
recipe="$(printf '%s %s\n' "$suite" "$packages" | sha1sum | cut -c1-10)"
image="localhost/ievnet-base:${suite}-${recipe}"
tarball="$cache/base/debian-${suite}-${recipe}.tar"

temporary=()
trap 'rm -rf "${temporary[@]}"' EXIT

if buildah inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi

# The mirror of apt's sources (one-line or deb822 format) that serves bookworm, if any.
host_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '
            /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { uri = $i; break }
                          if (uri ~ /\/debian\/?$/ && $(i + 1) == suite) { print uri; exit } uri = "" }
            /^URIs:/    { uri = $2 }
            /^Suites:/  { if (uri ~ /\/debian\/?$/ && index(" " $0 " ", " " suite " ")) { print uri; exit } }
        ' "$f"
    done | head -n 1
}

if [ ! -s "$tarball" ]; then
    mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/ievnet-rootfs.XXXXXX")"
    temporary+=("$rootfs" "$rootfs.log")
    echo "local_base: debootstrap $suite ($packages) from $mirror" >&2
    start=$SECONDS
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    # as in Debian's own images: no package lists or downloaded packages in the base
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    chroot "$rootfs" python3 --version >&2
    mkdir -p "$(dirname "$tarball")"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    # deleting ~10,000 fresh files took a minute here: in the background, not waited for
    temporary=("$rootfs.log")
    nohup rm -rf "$rootfs" >/dev/null 2>&1 &
    echo "local_base: root file system $tarball ($(du -h "$tarball" | cut -f1)," \
        "$((SECONDS - start)) s)" >&2
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/ievnet-base.XXXXXX")"
temporary+=("$context")
ln "$tarball" "$context/rootfs.tar" 2>/dev/null || cp "$tarball" "$context/rootfs.tar"
printf 'FROM scratch\nADD rootfs.tar /\n' >"$context/Containerfile"
buildah bud --quiet --isolation chroot --layers=false -t "$image" "$context" >&2
echo "$image"
