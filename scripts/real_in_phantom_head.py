"""The two real IE-Vnet sample crops pasted into a synthetic full-head dataset (evaluation only).

A one-subject phantom BIDS dataset is written (``ievnet_bids.synth.head``); in its inner-ear
slab the left and right phantom ear ROIs are replaced by the real crops
``../shared/data/ievnet-samples/vol_ie_{L,R}.nii.gz`` (their voxel arrays placed on the
phantom's ROI grids, i.e. in the head's anatomical axes; intensities scaled so that their
99.5th percentile matches the slab's fluid level; feathered edges).  Then the whole
participant level runs (``ievnet-bids … participant``) once per localizer, and its masks are
compared with the model run directly on the crops (``Segmenter`` + post-processing, the
probability mapped onto the slab the same way): Dice, volumes, and the distance between the
found ear centre and the centre of the pasted crop.

Usage: ``python scripts/real_in_phantom_head.py [--out runs/real_in_head] [--seed 7]``.
Never trains or tunes on the real crops.  Writes ``summary.tsv`` and ``real_in_head.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.geometry.extract import box_around, sub_grid
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.metrics import dice
from ievnet_bids.synth.head import fade_weight, save_nifti, write_bids_dataset

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ievnet-samples"
CROPS = {"left": "vol_ie_L.nii.gz", "right": "vol_ie_R.nii.gz"}


def paste_real_crops(bids: Path, truth_json: Path, samples: Path) -> dict[str, RoiGrid]:
    """Replace both phantom ear ROIs of the slab by the real crops; returns the ROI grids."""
    truth = json.loads(truth_json.read_text())
    slab_path = bids / truth["t2w"]
    slab_img = nib.load(slab_path)
    image = np.asanyarray(slab_img.dataobj).astype(np.float32)
    slab = RoiGrid(tuple(truth["slab"]["shape"]), np.array(truth["slab"]["affine"]))
    grids = {}
    for side, name in CROPS.items():
        crop = np.asanyarray(nib.load(samples / name).dataobj).astype(np.float32)
        roi = truth["ears"][side]["roi_grid"]
        grid = RoiGrid(tuple(roi["shape"]), np.array(roi["affine"]))
        if crop.shape != grid.shape:
            raise SystemExit(f"{samples / name}: shape {crop.shape}, expected {grid.shape}")
        box = box_around(grid, slab)
        if box is None:
            raise SystemExit(f"{side} ROI lies outside the slab")
        target = sub_grid(slab, box)
        local = resample(crop, grid.affine, target, order=3).clip(0, None)
        local *= truth["fluid_level"] / np.percentile(crop, 99.5)
        w = fade_weight(target, grid)
        image[box] = w * local + (1 - w) * image[box]
        grids[side] = grid
    save_nifti(np.round(image).clip(0, 32767).astype(np.int16), slab_img.affine, slab_path)
    return grids


def direct_masks(samples: Path, grids: dict[str, RoiGrid], slab: nib.Nifti1Image) -> dict:
    """The model on the crops themselves, probability mapped onto the slab and thresholded."""
    from ievnet_bids.model.infer import Segmenter
    from ievnet_bids.model.weights import load_model
    from ievnet_bids.postprocess import threshold_and_clean
    from ievnet_bids.resources import default_model_path
    from ievnet_bids.segmentation import cleaned_probability

    model, card = load_model(default_model_path())
    seg = Segmenter(model, card, device="cpu", tta_flip=True)  # as the participant level
    slab_grid = RoiGrid(slab.shape[:3], slab.affine)
    out = {}
    for side, name in CROPS.items():
        crop = np.asanyarray(nib.load(samples / name).dataobj).astype(np.float32)
        prob = seg.predict_proba(crop)
        keep, _ = threshold_and_clean(prob, 0.2, card.threshold, params=card.cleanup, image=crop)
        prob = cleaned_probability(  # as the map-back does
            prob,
            keep,
            card.threshold,
            image=crop,
            border_fluid_fraction=card.cleanup.border_fluid_fraction,
        )
        on_slab = resample(prob, grids[side].affine, slab_grid, order=1)
        out[side] = {
            "mask": on_slab >= card.threshold,
            "roi_volume_mm3": float(keep.sum()) * 0.008,
        }
    return out


def draw(slab: np.ndarray, masks: dict, grids: dict, affine: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    vmax = np.percentile(slab, 99.8)
    inv = np.linalg.inv(affine)
    for row, side in enumerate(("right", "left")):
        centre = np.rint(inv[:3, :3] @ grids[side].centre_mm + inv[:3, 3]).astype(int)
        half = np.ceil(12.0 / np.sqrt((affine[:3, :3] ** 2).sum(0))).astype(int)  # ±12 mm
        window = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(centre, half, strict=True))
        for col, axis in enumerate((2, 1, 0)):
            ax = axes[row, col]
            cut = tuple(centre[a] - window[a].start if a == axis else slice(None) for a in range(3))
            img = slab[window][cut]
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            for mask, colour in ((masks["direct"][side], "c"), (masks["pipeline"][side], "r")):
                m = mask[window][cut]
                if m.any():
                    ax.contour(m.T, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(f"{side} ear, {('axial', 'coronal', 'sagittal')[col]}")
            ax.axis("off")
    fig.suptitle("real crops in a phantom head: pipeline mask (red) vs model on the crop (cyan)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_in_head"))
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--localizers", nargs="+", default=["template", "detect"])
    args = parser.parse_args()
    from ievnet_bids.cli.run import main as ievnet_bids_main

    out = args.out.resolve()
    bids, truth_dir = out / "bids", out / "truth"
    info = write_bids_dataset(bids, truth_dir, n_subjects=1, seed=args.seed)
    truth_json = Path(info["images"][0]["truth"])
    grids = paste_real_crops(bids, truth_json, args.samples)
    slab_path = Path(info["images"][0]["t2w"])
    slab_img = nib.load(slab_path)
    direct = direct_masks(args.samples, grids, slab_img)
    voxel_mm3 = float(abs(np.linalg.det(slab_img.affine[:3, :3])))

    rows, pipeline_masks = [], {}
    for localizer in args.localizers:
        deriv = out / f"derivatives-{localizer}"
        code = ievnet_bids_main(
            [str(bids), str(deriv), "participant", "-w", str(out / f"work-{localizer}"),
             "--localizer", localizer, "--nprocs", "2", "--omp-nthreads", "2"]
        )  # fmt: skip
        anat = deriv / "sub-01" / "anat"
        with next(anat.glob("*_desc-tfs_volumes.tsv")).open() as fh:
            found = {r["side"]: r for r in csv.DictReader(fh, delimiter="\t")}
        masks = {}
        for side in CROPS:
            path = next(anat.glob(f"*_space-orig_label-TFS_desc-{side}_mask.nii.gz"))
            masks[side] = np.asanyarray(nib.load(path).dataobj) > 0
            centre = np.array([float(found[side][f"centre_{a}_mm"]) for a in "xyz"])
            rows.append(
                {
                    "localizer": localizer,
                    "exit_code": code,
                    "side": side,
                    "dice_vs_direct": round(dice(masks[side], direct[side]["mask"]), 4),
                    "volume_pipeline_mm3": round(float(masks[side].sum()) * voxel_mm3, 1),
                    "volume_direct_slab_mm3": round(
                        float(direct[side]["mask"].sum()) * voxel_mm3, 1
                    ),
                    "volume_direct_roi_mm3": round(direct[side]["roi_volume_mm3"], 1),
                    "centre_offset_from_crop_mm": round(
                        float(np.linalg.norm(centre - grids[side].centre_mm)), 2
                    ),
                    "roi_volume_pipeline_mm3": found[side]["volume_mm3"],
                    "n_components": found[side]["n_components"],
                    "qc_flags": found[side]["qc_flags"],
                }
            )
        pipeline_masks[localizer] = masks
    keys = list(rows[0])
    lines = ["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in rows]
    (out / "summary.tsv").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    slab = np.asanyarray(slab_img.dataobj).astype(np.float32)
    first = pipeline_masks[args.localizers[0]]
    draw(slab, {"direct": {s: d["mask"] for s, d in direct.items()}, "pipeline": first},
         grids, slab_img.affine, out / "real_in_head.png")  # fmt: skip
    print(f"figure: {out / 'real_in_head.png'}")


if __name__ == "__main__":
    main()
