"""Wall time per stage and peak memory of the participant level on a synthetic dataset.

Writes a phantom BIDS dataset (``--subjects`` subjects, full heads), runs
``ievnet-bids BIDS OUT participant`` as a child process and samples the resident memory of
its whole process tree (``/proc``, every 0.1 s) while it runs.  Prints the wall time, the
peak summed RSS of the tree and of its largest process, the peak summed PSS of the tree
(the real footprint: RSS counts the libraries the workers share with the forkserver in
each), and the time of each Nipype node (from the ``elapsed time`` lines of each unit's
``sub-XX/log/**/nipype.log``), summed over subjects and ears; ``--json FILE`` also writes
these figures as JSON.

    python benchmarks/bench_participant.py --subjects 2 --nprocs 2 [--omp-nthreads 1] \
        [--json bench.json] [--keep DIR] [--bids DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

FINISHED = re.compile(r'\[Node\] Finished "([^"]+)", elapsed time ([0-9.]+)s')


def _proc_kb(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", "VmRSS:")


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (the libraries workers inherit from the
    forkserver) divided among the processes that share them, so the sum is real memory."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def tree_rss_kb(root: int) -> tuple[int, int, int]:
    """(summed RSS, largest RSS, summed PSS) in kB of ``root`` and all its descendants."""
    total = largest = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        rss = _rss_kb(pid)
        total += rss
        largest = max(largest, rss)
        pss += _pss_kb(pid)
        stack.extend(_children(pid))
    return total, largest, pss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--omp-nthreads", type=int, help="default: --nprocs (one unit at a time)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--keep", type=Path, help="run in this folder and keep it")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument(
        "--bids",
        type=Path,
        help="run on this phantom dataset (from an earlier --keep) instead of writing one: "
        "the same images for runs of two versions of the code",
    )
    args = p.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_participant_"))
    out, work = root / "derivatives", root / "work"
    if out.exists() or work.exists():  # a cached run would time nothing
        p.error(f"{root} already holds a run: give a fresh --keep folder")
    root.mkdir(parents=True, exist_ok=True)
    if args.bids is not None:
        bids = args.bids.resolve()
        args.subjects = len(list(bids.glob("sub-*/")))
    else:
        from ievnet_bids.synth.head import write_bids_dataset

        bids = root / "bids"
        write_bids_dataset(bids, root / "truth", n_subjects=args.subjects, seed=args.seed)
    cmd = [
        sys.executable, "-m", "ievnet_bids.cli.run", str(bids), str(out), "participant",
        "-w", str(work), "--nprocs", str(args.nprocs),
        "--omp-nthreads", str(args.omp_nthreads or args.nprocs),
    ]  # fmt: skip
    log = root / "run.log"
    t0 = time.perf_counter()
    peak_total = peak_single = peak_pss = 0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
        while proc.poll() is None:
            total, single, pss = tree_rss_kb(proc.pid)
            peak_total, peak_single = max(peak_total, total), max(peak_single, single)
            peak_pss = max(peak_pss, pss)
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    stages: dict[str, list[float]] = defaultdict(list)
    for unit_log in sorted(out.glob("sub-*/log/**/nipype.log")):
        for name, seconds in FINISHED.findall(unit_log.read_text()):
            stages[name].append(float(seconds))
    n = args.subjects
    print(f"participant level: {n} subject(s), --nprocs {args.nprocs}, exit {proc.returncode}")
    print(f"wall {wall:.1f} s ({wall / args.subjects:.1f} s per subject, incl. start-up)")
    mib = (peak_total / 1024, peak_single / 1024)
    print(f"peak RSS: process tree {mib[0]:.0f} MiB, largest process {mib[1]:.0f} MiB; "
          f"peak PSS of the tree {peak_pss / 1024:.0f} MiB (shared pages once)")  # fmt: skip
    print("node time (sum over subjects/ears; nodes of one subject run in parallel):")
    for name, times in sorted(stages.items(), key=lambda kv: -sum(kv[1])):
        each = sum(times) / len(times)
        print(f"  {name:24s} {sum(times):7.1f} s  ({len(times)} runs, {each:.2f} s each)")
    print(f"log: {log}")
    if args.json:
        figures = {
            "subjects": n,
            "nprocs": args.nprocs,
            "omp_nthreads": args.omp_nthreads or args.nprocs,
            "exit": proc.returncode,
            "wall_s": round(wall, 2),
            "per_subject_s": round(wall / n, 2),
            "peak_tree_mib": round(mib[0]),
            "peak_process_mib": round(mib[1]),
            "peak_tree_pss_mib": round(peak_pss / 1024),
            "stages": {
                name: {
                    "total_s": round(sum(t), 2),
                    "runs": len(t),
                    "mean_s": round(sum(t) / len(t), 3),
                }
                for name, t in stages.items()
            },
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return int(proc.returncode)


if __name__ == "__main__":
    sys.exit(main())
