#!/bin/bash
# Submit ievnet-bids to SLURM: index the dataset once, one array task per participant, then
# the group level when every task has succeeded (see the SLURM section of README.md).
#
#   scripts/slurm_submit.sh BIDS_DIR OUTPUT_DIR
#
# Prints the three job ids. Settings (environment), besides those of slurm_participant.sbatch
# (IEVNET_RUNTIME, IEVNET_IMAGE, IEVNET_VENV, IEVNET_SCRATCH, IEVNET_GPU, IEVNET_ARGS, ...):
#   IEVNET_CPUS          CPUs per participant task (default 4; becomes --nprocs)
#   IEVNET_MEM           memory per participant task (default 8G; becomes --mem-gb)
#   IEVNET_TIME          time limit per participant task (default 01:00:00)
#   IEVNET_MAX_PARALLEL  at most this many tasks at once (the array's %N; default: no limit)
#   IEVNET_SBATCH_ARGS   more sbatch options for every job, e.g. "--partition=short --account=lab"
#   IEVNET_RUN_DIR       folder of this submission: participant list, database, SLURM logs
#                        (default: OUTPUT_DIR/logs/slurm/<date-time>)
#   IEVNET_NO_DB=1       no shared pybids database (each task indexes its participant)
#   IEVNET_GROUP_DEPENDENCY  afterok (default) or afterany (group level despite failed tasks)
#   IEVNET_SBATCH        the sbatch command (default: sbatch)
set -euo pipefail

if [ $# -ne 2 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
job_script="$here/slurm_participant.sbatch"
sbatch_cmd="${IEVNET_SBATCH:-sbatch}"

[ -d "$1" ] || { echo "slurm_submit: no BIDS folder $1" >&2; exit 66; }
IEVNET_BIDS_DIR="$(cd "$1" && pwd -P)"
mkdir -p "$2"
IEVNET_OUTPUT_DIR="$(cd "$2" && pwd -P)"
run_dir="${IEVNET_RUN_DIR:-$IEVNET_OUTPUT_DIR/logs/slurm/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd -P)"
export IEVNET_BIDS_DIR IEVNET_OUTPUT_DIR

# the participant list, frozen for this submission: array task N processes line N
IEVNET_PARTICIPANTS="$run_dir/participants.txt"
bash "$job_script" list >"$IEVNET_PARTICIPANTS"
export IEVNET_PARTICIPANTS
n="$(grep -c . "$IEVNET_PARTICIPANTS" || true)"
if [ "$n" -eq 0 ]; then
    echo "slurm_submit: no participants in $IEVNET_BIDS_DIR" >&2
    exit 16
fi

if [ "${IEVNET_NO_DB:-0}" = 1 ]; then
    unset IEVNET_DB_DIR
else
    export IEVNET_DB_DIR="${IEVNET_DB_DIR:-$run_dir/bids_db}"
fi

cpus="${IEVNET_CPUS:-4}"
# shellcheck disable=SC2206  # IEVNET_SBATCH_ARGS is a word-split list of options
common=(--parsable --kill-on-invalid-dep=yes ${IEVNET_SBATCH_ARGS:-})

submit() {
    local out
    out="$("$sbatch_cmd" "${common[@]}" "$@")"
    printf '%s\n' "${out%%;*}"  # --parsable prints "jobid[;cluster]"
}

dependency=()
if [ -n "${IEVNET_DB_DIR:-}" ]; then
    index_id="$(submit --job-name=ievnet-index --cpus-per-task=1 --mem=4G --time=00:30:00 \
        --output="$run_dir/%x-%j.out" "$job_script" index)"
    dependency=(--dependency="afterok:$index_id")
    echo "index job:        $index_id" >&2
fi

array="1-$n${IEVNET_MAX_PARALLEL:+%$IEVNET_MAX_PARALLEL}"
gpu=()
[ "${IEVNET_GPU:-0}" = 1 ] && gpu=(--gres=gpu:1)
array_id="$(submit --job-name=ievnet-participant --array="$array" --cpus-per-task="$cpus" \
    --mem="${IEVNET_MEM:-8G}" --time="${IEVNET_TIME:-01:00:00}" \
    ${gpu[@]+"${gpu[@]}"} ${dependency[@]+"${dependency[@]}"} \
    --output="$run_dir/%x-%A_%a.out" "$job_script" participant)"
echo "participant array: $array_id ($n participant(s), tasks $array)" >&2

group_id="$(submit --job-name=ievnet-group --cpus-per-task="$cpus" --mem="${IEVNET_MEM:-8G}" \
    --time="${IEVNET_TIME:-01:00:00}" \
    --dependency="${IEVNET_GROUP_DEPENDENCY:-afterok}:$array_id" \
    --output="$run_dir/%x-%j.out" "$job_script" group)"
echo "group job:        $group_id" >&2
echo "logs:             $run_dir" >&2
echo "${index_id:-} $array_id $group_id"
