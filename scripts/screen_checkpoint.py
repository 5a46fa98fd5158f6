"""Screen model weights on the ROIs a participant-level run cut from synthetic slabs.

    python scripts/screen_checkpoint.py WEIGHTS [WEIGHTS ...] --root runs/flag-eval \\
        [--outputs out-shipped]

Takes every ``space-ROI`` T2w image of ``ROOT/OUTPUTS`` (written by
``scripts/eval_participant.py``), segments it with each ``WEIGHTS`` (flip TTA, the shipped
model card's clean-up) and scores the mask against the phantom's own 0.2 mm TFS
(``ROOT/truth/*_space-ROI_desc-<side>_tfs.nii.gz``) with
:func:`eval_participant.roi_scores`: ROI-grid Dice, canal recall, canal loops. About 2 s per
ear on 2 cores instead of a whole participant-level run per checkpoint; the ROIs stay those
the shipped model's localization and re-centring chose. A screen, not the final figure:
confirm a candidate with ``eval_participant.py --model``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_participant import roi_scores

from ievnet_bids.model.infer import Segmenter
from ievnet_bids.model.weights import load_model
from ievnet_bids.postprocess import threshold_and_clean
from ievnet_bids.resources import default_model_path

ROI_T2W = "_acq-space_space-ROI_desc-{side}_T2w.nii.gz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, nargs="+")
    p.add_argument("--root", type=Path, required=True, help="an eval_participant.py root")
    p.add_argument("--outputs", default="out-shipped", help="its output folder (ROI images)")
    args = p.parse_args(argv)
    cleanup = load_model(default_model_path())[1].cleanup
    ears = []
    for side in ("left", "right"):
        for roi in sorted((args.root / args.outputs).rglob("*" + ROI_T2W.format(side=side))):
            prefix = roi.name.split("_acq-")[0]
            truth = args.root / "truth" / f"{prefix}_space-ROI_desc-{side}_tfs.nii.gz"
            if truth.is_file():
                ears.append((f"{prefix} {side}", nib.load(roi), nib.load(truth)))
    if not ears:
        p.error(f"no ROI images with ROI-grid truth under {args.root}")
    ears.sort(key=lambda e: e[0])
    for weights in args.weights:
        model, card = load_model(weights)
        segmenter = Segmenter(model, card, "cpu", tta_flip=True)
        rows = []
        for name, roi, truth in ears:
            image = np.asarray(roi.dataobj, dtype=np.float32)
            prob = segmenter.predict_proba(image)
            spacing = tuple(float(z) for z in roi.header.get_zooms()[:3])
            mask, _ = threshold_and_clean(
                prob, spacing, card.threshold, params=cleanup, image=image
            )
            img = nib.Nifti1Image(mask.astype(np.uint8), roi.affine, roi.header)
            row = roi_scores(img, truth)
            rows.append(row)
            loops = f"{row['loops_pred']}/{row['loops_truth']}"
            print(f"{weights.name} {name:16s} Dice {row['roi_dice']:.4f} "
                  f"canal recall {row['canal_recall']} loops {loops}")  # fmt: skip
        dice = [float(r["roi_dice"]) for r in rows]
        recall = [float(r["canal_recall"]) for r in rows if r["canal_recall"] != "n/a"]
        broken = sum(int(r["loops_pred"]) < min(int(r["loops_truth"]), 3) for r in rows)
        print(f"# {weights}: ROI Dice mean {np.mean(dice):.4f} min {min(dice):.4f}; canal "
              f"recall mean {np.mean(recall):.3f} min {min(recall):.3f}; {broken}/{len(rows)} "
              "masks with a canal loop fewer than their truth")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
