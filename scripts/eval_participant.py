"""Run the whole participant level on the synthetic full-head test dataset and score each ear.

    python scripts/eval_participant.py [--model WEIGHTS] [--root runs/eval_participant]
    python scripts/eval_participant.py --root runs/slab-calib --seed 21 --subjects 8 --sessions 0

Builds (once, in ``ROOT``) the dataset the participant tests use (``tests/conftest.py``:
2 subjects, 3 sessions, seed 11, 0.5 mm slabs) or, with ``--seed/--subjects/--sessions``,
another one (a calibration set: never choose anything on the test dataset), runs
``ievnet-bids … participant`` with the given model, and prints per ear: Dice against the
phantom ground truth on the slab grid, predicted and true volume (mm³), the localizer and
the QC flags; and on the 0.2 mm ROI grid, against the phantom's own TFS: Dice, canal recall
and canal loops of truth and mask. These phantoms are intact: a flag is a false alarm unless
the mask itself is defective (``missing_canal_loop`` with fewer loops than the truth is the
model breaking a canal, which the flag reports correctly).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.bids.derivatives import read_tsv
from ievnet_bids.cli.run import main as run_main
from ievnet_bids.config import PRECISIONS
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.metrics import dice
from ievnet_bids.synth.head import write_bids_dataset

TEST_DATASET_SEED = 11  # tests/conftest.py SYNTH_BIDS_SEED
SIDES = ("left", "right")


def roi_scores(roi_mask: nib.Nifti1Image, truth_roi: nib.Nifti1Image) -> dict[str, object]:
    """ROI-grid scores of a predicted mask against the phantom's own 0.2 mm TFS (resampled
    onto the prediction's ROI grid): Dice, canal recall (the fraction of the truth's thin
    parts, :func:`~ievnet_bids.train.loop.thin_structure`, inside the mask) and the canal
    loops (:func:`ievnet_bids.qc.topology`) of truth and prediction."""
    import torch

    from ievnet_bids.qc import topology
    from ievnet_bids.train.loop import thin_structure

    grid = RoiGrid(tuple(roi_mask.shape[:3]), roi_mask.affine)
    truth = np.asarray(truth_roi.dataobj, dtype=np.float32)
    ref = resample(truth, truth_roi.affine, grid, order=1) >= 0.5
    pred = np.asarray(roi_mask.dataobj) > 0
    spacing = tuple(float(z) for z in roi_mask.header.get_zooms()[:3])
    thin = thin_structure(torch.from_numpy(ref[None, None].astype(np.float32)))[0, 0].numpy() > 0
    return {
        "roi_dice": round(dice(pred, ref), 4),
        "canal_recall": round(float(pred[thin].mean()), 4) if thin.any() else "n/a",
        "loops_truth": topology(ref, spacing).canal_loops,
        "loops_pred": topology(pred, spacing).canal_loops,
    }


def score(bids: Path, truth: Path, out: Path) -> list[dict[str, object]]:
    """Per-ear Dice and volumes of the participant outputs in ``out`` (and, where the truth
    holds the phantoms' ROI-grid TFS, :func:`roi_scores`)."""
    rows: list[dict[str, object]] = []
    for slab in sorted(bids.glob("sub-*/**/anat/*_acq-space_T2w.nii.gz")):
        prefix = slab.name.split("_acq-")[0]
        anat = out / slab.parent.relative_to(bids)
        voxel_mm3 = float(np.prod(nib.load(slab).header.get_zooms()[:3]))
        volumes = read_tsv(anat / f"{prefix}_acq-space_desc-tfs_volumes.tsv")
        table = {r["side"]: r for r in volumes}
        for side in SIDES:
            name = f"{prefix}_acq-space_space-orig_label-TFS_desc-{side}_mask.nii.gz"
            pred = np.asanyarray(nib.load(anat / name).dataobj) > 0
            ref = np.asanyarray(nib.load(truth / f"{prefix}_desc-{side}_tfs.nii.gz").dataobj) > 0
            row: dict[str, object] = {
                "image": prefix,
                "side": side,
                "dice": round(dice(pred, ref), 4),
                "volume_pred_mm3": round(pred.sum() * voxel_mm3, 1),
                "volume_ref_mm3": round(ref.sum() * voxel_mm3, 1),
                "localizer": table[side]["localizer"],
                "qc_flags": table[side]["qc_flags"],
            }
            truth_roi = truth / f"{prefix}_space-ROI_desc-{side}_tfs.nii.gz"
            if truth_roi.is_file():
                roi = f"{prefix}_acq-space_space-ROI_label-TFS_desc-{side}_mask.nii.gz"
                row |= roi_scores(nib.load(anat / roi), nib.load(truth_roi))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="weights (default: the shipped model)")
    p.add_argument("--root", type=Path, default=Path("runs/eval_participant"))
    p.add_argument("--seed", type=int, default=TEST_DATASET_SEED, help="dataset seed")
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument(
        "--sessions",
        type=lambda v: [int(x) for x in v.split(",")] if v != "0" else None,
        default=[2, 1],
        help="sessions per subject, comma-separated (default 2,1); 0: no ses- entity",
    )
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default=True, help="flip TTA (default on)"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = p.parse_args(argv)
    bids, truth = args.root / "bids", args.root / "truth"
    if not (bids / "dataset_description.json").is_file():
        write_bids_dataset(
            bids, truth, n_subjects=args.subjects, sessions=args.sessions, seed=args.seed
        )
    tag = (args.model.parent.name + "-" + args.model.stem if args.model else "shipped") + (
        "" if args.tta else "-notta"
    )
    tag += "" if args.precision == "auto" else f"-{args.precision}"
    out, work = args.root / f"out-{tag}", args.root / f"work-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--model", str(args.model)] if args.model else []
    extra += ["--tta" if args.tta else "--no-tta", "--precision", args.precision]
    rc = run_main(
        [str(bids), str(out), "participant", "-w", str(work), "--nprocs", str(args.nprocs), *extra]
    )
    if rc != 0:
        print(f"participant level failed with exit code {rc}", file=sys.stderr)
        return rc
    rows = score(bids, truth, out)
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(rows)
    dices = [float(r["dice"]) for r in rows]  # type: ignore[arg-type]
    flagged = [r for r in rows if r["qc_flags"] not in ("", "n/a")]
    print(f"# {tag}: Dice min {min(dices):.4f} mean {np.mean(dices):.4f}; "
          f"{sum(d >= 0.9 for d in dices)}/{len(dices)} ears >= 0.9; "
          f"{len(flagged)}/{len(rows)} ears flagged")  # fmt: skip
    if all("roi_dice" in r for r in rows):
        roi = [float(r["roi_dice"]) for r in rows]  # type: ignore[arg-type]
        recall = [float(r["canal_recall"]) for r in rows if r["canal_recall"] != "n/a"]  # type: ignore[arg-type]
        # fewer canal loops than the truth's (at most 3: septa can add thin loops there)
        broken = sum(
            int(r["loops_pred"]) < min(int(r["loops_truth"]), 3)  # type: ignore[call-overload]
            for r in rows
        )
        print(f"# ROI grid: Dice min {min(roi):.4f} mean {np.mean(roi):.4f}; canal recall "
              f"min {min(recall):.3f} mean {np.mean(recall):.3f}; "
              f"{broken}/{len(rows)} masks with a canal loop fewer than their truth")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
