"""Phantom generator throughput: seconds per 200×150×100 sample on one CPU core.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--samples 20]``. Pins BLAS/OpenMP to one
thread before numpy loads, so the figure is per core.
"""

from __future__ import annotations

import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1000)
    args = parser.parse_args()
    from ievnet_bids.synth.phantom import generate_phantom

    generate_phantom(0)  # warm-up: imports, MNI maps cache
    times, attempts = [], []
    for contrast in ("space", "random"):
        for seed in range(args.first_seed, args.first_seed + args.samples // 2):
            t0 = time.perf_counter()
            ph = generate_phantom(seed, contrast=contrast, side="left" if seed % 2 else "right")
            times.append(time.perf_counter() - t0)
            attempts.append(ph.meta["topology_attempts"])
    t = np.array(times)
    print(f"phantom 200x150x100 @0.2 mm, 1 core, {len(t)} samples")
    print(f"  mean {t.mean():.3f} s  median {np.median(t):.3f} s  p90 {np.percentile(t, 90):.3f} s")
    print(f"  samples per second per core: {1 / t.mean():.2f}")
    print(f"  topology redraws per sample: {np.mean(attempts) - 1:.2f}")


if __name__ == "__main__":
    main()
