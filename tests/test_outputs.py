"""Per-slab derivatives (ievnet_bids.outputs): volumes table against planted masks.

The table is written from each ear's QC record (measured on the ROI grid, here a planted
0.5 mm "ROI" mask) plus the volume of the published slab-grid mask."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np

from ievnet_bids.outputs import stage_slab_outputs
from ievnet_bids.qc import ear_record

SLAB = "sub-01/anat/sub-01_acq-space_T2w.nii.gz"


def _ear_files(
    tmp_path, side: str, mask: np.ndarray, affine: np.ndarray, roi_mask: np.ndarray | None = None
) -> dict:
    """Slab-grid files of ``mask`` and the QC record of ``roi_mask`` (default: ``mask``)."""
    mask_path = tmp_path / f"{side}_mask.nii.gz"
    prob_path = tmp_path / f"{side}_prob.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_path)
    nib.save(nib.Nifti1Image(mask.astype(np.float32) * 0.9, affine), prob_path)
    roi = mask if roi_mask is None else roi_mask
    qc = ear_record(roi_mask=roi, roi_prob=roi * 0.9, roi_spacing=0.5, moved_mm=0.5)
    return {"mask": mask_path, "prob": prob_path, "centre_mm": [1.0, 2.0, 3.0],
            "moved_mm": 0.5, "qc": qc}  # fmt: skip


def test_volume_table_counts_components_like_the_qc_flag(tmp_path, tiny_bids):
    bids = tiny_bids(tmp_path / "bids", [SLAB])
    slab = bids / SLAB
    affine = np.diag([0.5, 0.5, 0.5, 1.0])  # 0.125 mm³ voxels
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.int16), affine), slab)
    left = np.zeros((40, 40, 20), bool)
    left[5:15, 5:15, 5:15] = True  # 1000 voxels = 125 mm³
    left[30, 30, 10] = True  # a 0.125 mm³ speck: not counted, not flagged
    right = np.zeros((40, 40, 20), bool)
    right[25:35, 5:15, 5:15] = True
    right[5:9, 30:34, 5:9] = True  # 64 voxels = 8 mm³: a real second component
    ears = {
        "left": _ear_files(tmp_path, "left", left, affine),
        "right": _ear_files(tmp_path, "right", right, affine),
    }
    # on the ROI grid the left ear's speck is gone: the table follows the ROI-grid record
    ears["left"]["qc"] = ear_record(
        roi_mask=np.pad(np.ones((10, 10, 10), bool), 2), roi_prob=None, roi_spacing=0.5
    )
    staged, rows = stage_slab_outputs(
        slab,
        ears,
        stage_dir=tmp_path / "stage",
        output_dir=tmp_path / "out",
        model_name="m",
        model_sha256="0" * 64,
        localizer="landmarks",
    )
    by_side = {r["side"]: r for r in rows}
    assert by_side["left"]["volume_mm3"] == 125.0  # the ROI grid's
    assert by_side["left"]["slab_volume_mm3"] == 125.125  # the published mask's, speck included
    assert by_side["left"]["n_components"] == 1
    assert "multiple_components" not in by_side["left"]["qc_flags"]
    assert by_side["right"]["volume_mm3"] == by_side["right"]["slab_volume_mm3"] == 133.0
    assert by_side["right"]["n_components"] == 2
    assert "multiple_components" in by_side["right"]["qc_flags"]
    # the staged TSV holds the same rows and lands next to the masks
    tsv = next(t for t, d in staged.items() if d.name.endswith("_desc-tfs_volumes.tsv"))
    with tsv.open() as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["side"], r["n_components"]) for r in table] == [("left", "1"), ("right", "2")]
    dseg = next(t for t, d in staged.items() if d.name.endswith("_space-orig_dseg.nii.gz"))
    values = np.asanyarray(nib.load(dseg).dataobj)
    assert (values == 1).sum() == 1001 and (values == 2).sum() == 1064


def test_work_images_in_final_form_are_copied_others_rewritten(tmp_path, tiny_bids):
    """A map-back image already stored as the derivative would be (image_like: the slab's
    grid, dtype and header) is published byte for byte; one that is not (here: float64 on a
    bare header) is decoded and rewritten as the derivative's dtype on the slab's header."""
    from ievnet_bids.geometry.extract import image_like

    bids = tiny_bids(tmp_path / "bids", [SLAB])
    slab = bids / SLAB
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    slab_img = nib.Nifti1Image(np.zeros((20, 20, 10), np.int16), affine)
    slab_img.set_sform(affine, code=1)
    slab_img.set_qform(affine, code=1)
    nib.save(slab_img, slab)
    mask = np.zeros((20, 20, 10), bool)
    mask[5:10, 5:10, 3:6] = True
    prob = np.where(mask, 0.75, 0.125)
    ears = {}
    for side, final in (("left", True), ("right", False)):
        ear = _ear_files(tmp_path, side, mask, affine)
        if final:  # as the map-back node writes them
            nib.save(image_like(mask, slab_img, np.uint8), ear["mask"])
            nib.save(image_like(prob, slab_img, np.float32), ear["prob"])
        else:
            nib.save(nib.Nifti1Image(prob, affine), ear["prob"])  # float64, no units
        ears[side] = ear
    staged, _ = stage_slab_outputs(
        slab, ears, stage_dir=tmp_path / "stage", output_dir=tmp_path / "out",
        model_name="m", model_sha256="0" * 64, localizer="landmarks",
    )  # fmt: skip
    by_name = {dest.name: src for src, dest in staged.items()}
    for side in ("left", "right"):
        name = f"sub-01_acq-space_space-orig_label-TFS_desc-{side}_probseg.nii.gz"
        out = by_name[name]
        same_bytes = out.read_bytes() == ears[side]["prob"].read_bytes()
        assert same_bytes is (side == "left"), side
        img = nib.load(out)
        assert img.get_data_dtype() == np.float32 and img.header.get_xyzt_units()[0] == "mm"
        assert int(img.header["sform_code"]) == 1
        np.testing.assert_array_equal(np.asarray(img.dataobj), prob.astype(np.float32))
