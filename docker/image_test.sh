#!/usr/bin/env bash
# make image-test: run the built image as a user would, and compare it with a source install.
#
#   docker/image_test.sh          (after `make install` and `make image`)
#
# Inside the image, as an unprivileged uid that has no account in it (as under Singularity or
# `docker run -u`), with the BIDS folder mounted read-only:
#   1. the image's configuration (entry point, non-root user), `--version`, `--help`, the
#      installed packages against requirements.lock, and that /bids cannot be written;
#   2. the participant level on the demo dataset (`make demo`'s: 3 subjects, 4 sessions,
#      subject 1 with a gadolinium FLAIR);
#   3. the group level;
#   4. the participant level again with the same work folder: every unit must reuse the
#      cached localization and segmentation, and the results must stay byte-identical.
# The source install (.venv) runs the same dataset with the same options and thread settings
# (first: meanwhile buildah deletes the previous image, see Makefile), and
# scripts/compare_derivatives.py compares both output folders (identical, or Dice of every
# mask >= 0.999). Exit status 0 when all of it passes.
#
# Without a Docker engine the image runs through buildah: one working container
# (`buildah from`), each step a `buildah run --isolation chroot --user UID:GID` with bind
# mounts (`-v DIR:/bids:ro`). No daemon, no runc or user namespaces needed: it works as root
# in a VM or container.
#
# Environment (and those of docker/image_lib.sh):
#   IMAGE_TEST_DIR  where the dataset, outputs and logs go (default: $IEVNET_IMAGE_CACHE/test,
#                   emptied first)
#   IMAGE_TEST_UID  uid:gid the image runs as (default: 4242:4242, no account in the image)
#   VENV            the source install (default: .venv)
#   NPROCS          --nprocs and --omp-nthreads of both runs (default: 2)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=image_lib.sh
source "$(dirname "$0")/image_lib.sh"
cd "$repo"

engine="$(image_engine)"
dir="${IMAGE_TEST_DIR:-$cache/test}"
user="${IMAGE_TEST_UID:-4242:4242}"
venv="${VENV:-$repo/.venv}"
nprocs="${NPROCS:-2}"
# the image's thread settings (Dockerfile ENV), for the source run too
threads=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
test_start=$SECONDS
timings=()

say() { echo "image_test: $*"; }
fail() {
    echo "image_test: FAILED: $*" >&2
    exit 1
}
timed() {  # timed LABEL COMMAND...: runs it, records its duration
    local label="$1" start=$SECONDS status=0
    shift
    "$@" || status=$?
    timings+=("$label: $((SECONDS - start)) s")
    return "$status"
}

[ -x "$venv/bin/ievnet-bids" ] || fail "no source install in $venv (make install)"
case "$engine" in
    docker) docker image inspect "$tag" >/dev/null 2>&1 ;;
    buildah) buildah inspect --type image "$tag" >/dev/null 2>&1 ;;
esac || fail "no image $tag (make image)"

# ------------------------------------------------------------------------ folders
# The BIDS folder belongs to root and is mounted read-only; outputs and work folders belong to
# the test uid (as a user's own folders would).
# the last run's folder: moved aside and deleted in the background (slow on this kind of disk)
if [ -e "$dir" ]; then mv "$dir" "$dir.old.$$"; fi
(nohup rm -rf "$dir".old.* >/dev/null 2>&1 &)
mkdir -p "$dir"
bids="$dir/bids" out="$dir/image-out" work="$dir/image-work" logs="$dir/logs"
src_out="$dir/source-out" src_work="$dir/source-work"
mkdir -p "$out" "$work" "$logs" "$src_out" "$src_work"
chown "$user" "$out" "$work"
say "$engine, image $tag, uid:gid $user, folder $dir"
timed "demo dataset" "$venv/bin/ievnet-synth" bids --out-dir "$bids" --truth-dir "$dir/truth" \
    --subjects 3 --sessions 1 2 1 --seed 2026 --hydrops --hydrops-subjects 1 \
    >/dev/null  # as ievnet_bids/demo.py writes it
chmod -R a-w "$bids"

# ------------------------------------------------------------------------ source install
# First, while buildah deletes the image the build untagged (disk-bound; this is CPU-bound).
cleanup_pid=""
if [ "$engine" = buildah ]; then
    build_cleanup >"$logs/build-cleanup.log" 2>&1 &
    cleanup_pid=$!
fi
timed "source participant" env "${threads[@]}" "$venv/bin/ievnet-bids" "$bids" "$src_out" \
    participant -w "$src_work" --nprocs "$nprocs" --omp-nthreads "$nprocs" \
    >"$logs/source-participant.log" 2>&1 || fail "source participant level exited with $?"
timed "source group" env "${threads[@]}" "$venv/bin/ievnet-bids" "$bids" "$src_out" group \
    >"$logs/source-group.log" 2>&1 || fail "source group level exited with $?"
if [ -n "$cleanup_pid" ]; then
    timed "waiting for the previous image's deletion" wait "$cleanup_pid" ||
        fail "deleting the previous image failed ($logs/build-cleanup.log)"
fi

# ------------------------------------------------------------------------ the image
mounts=(-v "$bids:/bids:ro" -v "$out:/out" -v "$work:/work")
case "$engine" in
    docker)
        config="$(docker image inspect --format '{{json .Config}}' "$tag")"
        in_image() { docker run --rm -u "$user" "${mounts[@]}" --entrypoint "$1" "$tag" "${@:2}"; }
        as_root() { docker run --rm -u 0:0 "${mounts[@]}" --entrypoint "$1" "$tag" "${@:2}"; }
        ;;
    buildah)
        config="$(buildah inspect --type image "$tag" |
            python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]))')"
        container="$(buildah from --pull-never --name "ievnet-image-test-$$" "$tag")"
        trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
        in_image() {
            buildah run --isolation chroot --user "$user" "${mounts[@]}" \
                "$container" -- "$@"
        }
        as_root() {
            buildah run --isolation chroot --user 0:0 "${mounts[@]}" "$container" -- "$@"
        }
        ;;
esac
# app ARGS...: the image's entry point with ARGS, as `docker run IMAGE ARGS` runs it
mapfile -t entrypoint < <(python3 -c 'import json, sys
print("\n".join(json.loads(sys.argv[1])["Entrypoint"]))' "$config")
app() { in_image "${entrypoint[@]}" "$@"; }

# 1. configuration, version, help, packages, permissions
image_user="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("User", ""))' \
    "$config")"
say "entry point ${entrypoint[*]}, user $image_user"
[ "${entrypoint[*]}" = ievnet-bids ] || fail "entry point ${entrypoint[*]}"
case "${image_user%%:*}" in "" | 0 | root) fail "the image runs as root" ;; esac
got="$(app --version)"
[ "$got" = "ievnet-bids $version" ] || fail "--version says '$got', expected 'ievnet-bids $version'"
app --help >"$logs/help.txt" || fail "--help exited with $?"
if ! grep -q "participant" "$logs/help.txt" || ! grep -q "group" "$logs/help.txt"; then
    fail "--help does not mention the analysis levels"
fi
say "--version: $got; --help: $(wc -l <"$logs/help.txt") lines"

in_image python -m pip list --format=freeze --disable-pip-version-check >"$logs/image-pip.txt"
python3 - "$logs/image-pip.txt" requirements.lock "$version" "$torch_version" <<'PY'
import re, sys
def pins(path):
    pairs = (line.split("==") for line in open(path).read().split() if "==" in line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pairs}
installed, lock = pins(sys.argv[1]), pins(sys.argv[2])
expected = {"ievnet-bids": sys.argv[3], "torch": sys.argv[4] + "+cpu"}
tools = {"pip", "setuptools", "wheel"}  # the venv's own
wrong = {n: v for n, v in installed.items()
         if n not in tools and v != expected.get(n, lock.get(n, "(not in requirements.lock)"))}
if wrong:
    sys.exit(f"image_test: FAILED: packages not as pinned: {wrong}")
print(f"image_test: {len(installed)} packages installed, each as pinned in requirements.lock")
PY
# shellcheck disable=SC2016  # expanded inside the image
in_image sh -c 'echo "uid $(id -u), HOME $HOME"; ! touch /bids/write-probe 2>/dev/null' ||
    fail "uid $user could write into /bids"
as_root sh -c '! touch /bids/write-probe 2>/dev/null' || fail "/bids is not mounted read-only"
say "/bids is read-only, for root too"

# 2.-4. participant, group, participant again (cache reuse)
options=(-w /work --nprocs "$nprocs" --omp-nthreads "$nprocs")
timed "image participant" app /bids /out participant "${options[@]}" >"$logs/image-participant.log" 2>&1 ||
    fail "participant level exited with $? (log: $logs/image-participant.log)"
timed "image group" app /bids /out group >"$logs/image-group.log" 2>&1 ||
    fail "group level exited with $? (log: $logs/image-group.log)"
[ -s "$out/group_tfs.tsv" ] || fail "no group_tfs.tsv"
[ -z "$(find "$out" "$work" ! -uid "${user%%:*}" -print -quit)" ] ||
    fail "files not owned by the test uid in $out or $work"

# results (not logs or reports, which record the run) before and after the second run
results() {
    (cd "$out" && find . -type f ! -path './logs/*' ! -name '*.html' ! -name '*.log' |
        LC_ALL=C sort | xargs sha256sum)
}
results >"$logs/results-1.sha256"
timed "image participant, cached" app /bids /out participant "${options[@]}" \
    >"$logs/image-participant-2.log" 2>&1 || fail "second participant run exited with $?"
results >"$logs/results-2.sha256"
cmp -s "$logs/results-1.sha256" "$logs/results-2.sha256" ||
    fail "the second run changed results: diff $logs/results-1.sha256 $logs/results-2.sha256"
units="$(grep -c ': done in ' "$logs/image-participant.log" || true)"
first="$(grep -c -E ': (localize|segment) done' "$logs/image-participant.log" || true)"
again="$(grep -c -E ': (localize|segment) done' "$logs/image-participant-2.log" || true)"
[ "$units" -ge 4 ] && [ "$first" -eq $((2 * units)) ] && [ "$again" -eq 0 ] ||
    fail "cache reuse: $units units, localize/segment ran $first times, then $again times"
say "second run: $units units, localization and segmentation all from the work folder's cache"
if grep -h -i -E "not writable|permission denied|read-only file system" "$logs"/image-*.log; then
    fail "the runs met an unwritable path (above)"
fi

# ------------------------------------------------------------------------ comparison
# Everything must be identical or within the strict tolerances (masks: Dice >= 0.999). The
# hydrops structure labels (a SyN registration of the labelled labyrinth template) once varied
# from run to run (antspyx dropped the seed argument; Dice 0.993-0.9995 between runs), and
# through them the ELS-aware FLAIR alignment and the ELS masks: they are seeded now
# (hydrops/structures.py), so nothing is exempt.
status=0
"$venv/bin/python" scripts/compare_derivatives.py "$out" "$src_out" --equate "/bids=$bids" \
    --dice-min 0.999 --json "$logs/compare.json" | tee "$logs/compare.txt" ||
    status=$?

size="$(image_size "$engine" "$tag")"
say "image $tag: $((size / 1000000)) MB (uncompressed)"
for line in "${timings[@]}"; do say "  $line"; done
say "total $((SECONDS - test_start)) s; outputs and logs in $dir"
[ "$status" -eq 0 ] || fail "the image's outputs differ from the source install's (above)"
say "passed"
