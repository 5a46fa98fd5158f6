"""ELS% and ELS Dice against the FLAIR's acquired voxel size, on synthetic iMRI ears.

Isolates the resolution: each ear is the phantom's true TFS with a FLAIR aligned to it,
rendered at every voxel size from the same anatomy and random draw (only the acquisition
differs), then :func:`ievnet_bids.hydrops.els.segment_els` with the shipped parameters and the
phantom's own structure labels (each structure has its threshold). Seeds
come from the hold-out range (never used to choose the ELS threshold); the hydrops severity
is spread evenly over none … severe.

    .venv/bin/python benchmarks/hydrops_resolution.py [--ears 20] [--voxels 0.3 0.4 0.5 0.6 0.8]
        [--json OUT.json]

Prints per voxel size: ELS% mean absolute error and mean bias (percentage points) for the
whole ear, the cochlea and the vestibule, and the ELS Dice (mean and minimum).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ievnet_bids.hydrops.els import els_percent, segment_els
from ievnet_bids.metrics import dice
from ievnet_bids.synth.endolymph import STRUCTURE_VALUES, structure_map
from ievnet_bids.synth.flair import flair_rng, render_flair
from ievnet_bids.synth.phantom import generate_phantom
from ievnet_bids.synth.seeds import HOLDOUT_SEED_START

FIRST_SEED = HOLDOUT_SEED_START + 700_000  # a block of the hold-out range of its own
REGIONS = ("ear", "cochlea", "vestibule")


def ear_scores(seed: int, severity: float, voxels: list[float]) -> dict[float, dict[str, float]]:
    """ELS% (estimate − truth) per region and ELS Dice of one ear at each FLAIR voxel size."""
    ph = generate_phantom(seed, hydrops=severity)
    assert ph.els is not None
    spacing = float(min(ph.grid.spacing))
    structures = structure_map(ph.labels)
    regions = {"ear": None, **{n: structures == STRUCTURE_VALUES[n] for n in REGIONS[1:]}}
    out: dict[float, dict[str, float]] = {}
    for voxel in voxels:
        flair, _ = render_flair(ph.labels, ph.els, flair_rng(seed), spacing, acquired_mm=voxel)
        els = segment_els(
            flair, ph.tfs, spacing_mm=spacing, flair_voxel_mm=voxel, structures=structures
        ).mask
        row = {"dice": dice(els, ph.els)}
        for name, region in regions.items():
            row[name] = els_percent(els, ph.tfs, region) - els_percent(ph.els, ph.tfs, region)
        out[voxel] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ears", type=int, default=20)
    p.add_argument("--voxels", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.8])
    p.add_argument("--first-seed", type=int, default=FIRST_SEED)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    per_ear = [
        ear_scores(args.first_seed + i, (i + 0.5) / args.ears, args.voxels)
        for i in range(args.ears)
    ]
    summary: dict[str, dict[str, float]] = {}
    print(f"{args.ears} ears, true TFS and alignment; ELS% error in percentage points")
    print("voxel_mm  " + "  ".join(f"{r}_MAE {r}_bias" for r in REGIONS) + "  dice_mean dice_min")
    for voxel in args.voxels:
        rows = [ear[voxel] for ear in per_ear]
        s: dict[str, float] = {}
        for r in REGIONS:
            err = np.array([row[r] for row in rows], dtype=float)
            err = err[np.isfinite(err)]
            s[f"{r}_mae"], s[f"{r}_bias"] = float(np.abs(err).mean()), float(err.mean())
        d = np.array([row["dice"] for row in rows])
        s["dice_mean"], s["dice_min"] = float(d.mean()), float(d.min())
        summary[f"{voxel:g}"] = s
        print(
            f"{voxel:<8g}  "
            + "  ".join(f"{s[f'{r}_mae']:6.2f} {s[f'{r}_bias']:+6.2f}" for r in REGIONS)
            + f"  {s['dice_mean']:.3f} {s['dice_min']:.3f}"
        )
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"ears": args.ears, "by_voxel_mm": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
