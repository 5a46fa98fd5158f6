"""Summary of a model on the synthetic hold-out set: per ear, per structure, per contrast.

Reads ``OUT/holdout_metrics.tsv`` (``ievnet-eval``: Dice, HD95, mean surface distance per
ear) and the predictions in ``OUT/pred``, and prints mean ± SD for all ears and separately for
the SPACE-like and the random-contrast phantoms (``OUT/holdout.tsv``; derived from the seeds
when absent).  Per structure, since the model predicts one TFS mask: the recall (fraction of
each structure's reference voxels inside the prediction) and the structure's Dice restricted
to its own neighbourhood (prediction voxels nearer to that structure than to any other TFS
structure, a nearest-label split of the prediction).  Writes ``OUT/holdout_structures.tsv``.

Usage: ``python scripts/holdout_structures.py OUT`` (OUT from ``scripts/eval_holdout.sh``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ievnet_bids.bids.derivatives import read_tsv
from ievnet_bids.metrics import dice, finite_stats
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, phantom_settings

EAR_METRICS = ("dice", "hd95_mm", "msd_mm", "volume_pred_mm3", "volume_ref_mm3")


def contrast_of_cases(out: Path, cases: list[str]) -> dict[str, str]:
    """Case → phantom contrast, from ``holdout.tsv`` or else from the case's seed."""
    manifest = out / "holdout.tsv"
    if manifest.is_file():
        return {r["case"]: r["contrast"] for r in read_tsv(manifest)}
    index = {c: int(c.split("_")[0].removeprefix("holdout-")) for c in cases}
    return {c: phantom_settings(HOLDOUT_SEED_START + i)["contrast"] for c, i in index.items()}


def structure_figures(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Recall and nearest-structure Dice of each TFS structure."""
    structure_map = np.zeros(labels.shape, np.int16)
    for k, values in enumerate(L.STRUCTURES.values(), start=1):
        structure_map[np.isin(labels, values)] = k
    _, nearest = ndimage.distance_transform_edt(structure_map == 0, return_indices=True)
    owner = structure_map[tuple(nearest)]
    row = {}
    for k, (name, values) in enumerate(L.STRUCTURES.items(), start=1):
        ref = np.isin(labels, values)
        row[f"{name}_recall"] = float((pred & ref).sum() / max(ref.sum(), 1))
        row[f"{name}_dice"] = dice(pred & (owner == k), ref)
    return row


def _summary(values: list[float]) -> str:
    s = finite_stats(values)
    if not s["n_finite"]:
        return "n/a"
    left = s["n"] - s["n_finite"]
    extra = f" ({left} inf left out)" if left else ""
    return f"{s['mean']:.3f} ± {s['sd']:.3f}  median {s['median']:.3f}  min {s['min']:.3f}{extra}"


def main(out: Path) -> None:
    ears = {r["case"]: r for r in read_tsv(out / "holdout_metrics.tsv")}
    rows = []
    for label_file in sorted((out / "labels").glob("*.nii.gz")):
        case = label_file.name.removesuffix(".nii.gz")
        pred_file = out / "pred" / f"{case}_mask.nii.gz"
        if not pred_file.exists() or case not in ears:
            print(f"missing prediction or metrics for {case}", file=sys.stderr)
            continue
        labels = np.asanyarray(nib.load(label_file).dataobj)
        pred = np.asanyarray(nib.load(pred_file).dataobj) > 0
        row: dict[str, float | str] = {"case": case}
        row.update({k: float(ears[case][k]) for k in EAR_METRICS})
        row.update(structure_figures(labels, pred))
        rows.append(row)
    if not rows:
        raise SystemExit(f"no cases in {out}")
    contrast = contrast_of_cases(out, [str(r["case"]) for r in rows])
    for r in rows:
        r["contrast"] = contrast[str(r["case"])]
    keys = [k for k in rows[0] if k not in ("case", "contrast")]
    groups = {"all": rows}
    for name in sorted({str(r["contrast"]) for r in rows}):
        groups[f"{name} contrast"] = [r for r in rows if r["contrast"] == name]
    for title, group in groups.items():
        print(f"{title}: {len(group)} hold-out ears (mean ± SD, median, min)")
        for key in keys:
            print(f"  {key:26s} {_summary([float(r[key]) for r in group])}")
    header = "\t".join(["case", "contrast", *keys])
    lines = [header] + [
        "\t".join([str(r["case"]), str(r["contrast"]), *(f"{float(r[k]):.4f}" for k in keys)])
        for r in rows
    ]
    (out / "holdout_structures.tsv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
