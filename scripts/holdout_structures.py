"""Per-structure figures of binary TFS predictions on the synthetic hold-out set.

The model predicts one TFS mask, so per structure we report the recall (fraction of each
structure's reference voxels inside the prediction) and the structure's Dice restricted to
the structure's own neighbourhood (prediction voxels nearer to that structure than to any
other TFS structure, as in a nearest-label split of the prediction).

Usage: ``python scripts/holdout_structures.py OUT`` (OUT from ``scripts/eval_holdout.sh``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ievnet_bids.metrics import dice
from ievnet_bids.synth import labels as L


def main(out: Path) -> None:
    rows = []
    for label_file in sorted((out / "labels").glob("*.nii.gz")):
        stem = label_file.name.removesuffix(".nii.gz")
        pred_file = out / "pred" / f"{stem}_mask.nii.gz"
        if not pred_file.exists():
            print(f"missing prediction for {stem}", file=sys.stderr)
            continue
        labels = np.asanyarray(nib.load(label_file).dataobj)
        pred = np.asanyarray(nib.load(pred_file).dataobj) > 0
        # nearest TFS structure for every voxel (structure index map)
        structure_map = np.zeros(labels.shape, np.int16)
        for k, values in enumerate(L.STRUCTURES.values(), start=1):
            structure_map[np.isin(labels, values)] = k
        _, nearest = ndimage.distance_transform_edt(structure_map == 0, return_indices=True)
        owner = structure_map[tuple(nearest)]
        row = {"case": stem}
        for k, (name, values) in enumerate(L.STRUCTURES.items(), start=1):
            ref = np.isin(labels, values)
            row[f"{name}_recall"] = float((pred & ref).sum() / max(ref.sum(), 1))
            row[f"{name}_dice"] = dice(pred & (owner == k), ref)
        rows.append(row)
    if not rows:
        raise SystemExit(f"no cases in {out}")
    keys = [k for k in rows[0] if k != "case"]
    print(f"per-structure figures over {len(rows)} hold-out ears (mean ± SD, min)")
    for key in keys:
        v = np.array([r[key] for r in rows])
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        print(f"  {key:26s} {v.mean():.3f} ± {sd:.3f}  min {v.min():.3f}")
    header = "\t".join(["case", *keys])
    lines = [header] + ["\t".join([r["case"], *(f"{r[k]:.4f}" for k in keys)]) for r in rows]
    (out / "holdout_structures.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
