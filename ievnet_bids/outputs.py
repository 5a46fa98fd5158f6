"""Compose one slab's BIDS-Derivatives (masks, probsegs, dseg, volumes table) and QC flags.

The QC checks live in :mod:`ievnet_bids.qc`; each ear's QC record is computed once, on the
0.2 mm ROI grid, by the segment node. The volumes table is written from it (volume, components,
flags), plus the volume of the published slab-grid mask (``slab_volume_mm3``); the report
node writes the same record into ``..._desc-tfs_qc.json``.

Everything is written to a staging folder first; :func:`ievnet_bids.bids.derivatives.publish`
then moves the whole set into the output dataset, so a failed subject leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ievnet_bids.bids import derivatives as D
from ievnet_bids.geometry.extract import image_like
from ievnet_bids.qc import flags_cell, significant_components

SIDES = ("left", "right")
DSEG_VALUE = {"left": 1, "right": 2}


def stage_slab_outputs(
    slab: Path,
    ears: dict[str, dict[str, Any]],
    *,
    stage_dir: Path,
    output_dir: Path,
    model_name: str,
    model_sha256: str,
    localizer: str,
    head: Path | None = None,
    inference: dict[str, Any] | None = None,
    rois: dict[str, dict[str, Path]] | None = None,
) -> tuple[dict[Path, Path], list[dict[str, Any]]]:
    """Write all derivatives of ``slab`` into ``stage_dir``.

    ``ears[side]`` holds ``prob`` and ``mask`` (native-grid NIfTI paths), ``centre_mm``,
    ``moved_mm`` and ``qc`` (the ear's QC record on the ROI grid); ``inference`` (e.g.
    ``ProbabilityThreshold``, ``FlipTTA``) goes into every sidecar. ``rois[side]`` (optional)
    holds the ROI-grid ``image``, ``prob`` and ``mask`` (the network's own 0.2 mm grid), staged
    as ``space-ROI`` derivatives with their ROI-to-slab transform. Returns
    ``({staged: destination}, volume rows)``.
    """
    slab_img = nib.load(str(slab))
    voxel_mm3 = float(np.prod(slab_img.header.get_zooms()[:3]))
    extra = (head,) if head is not None else ()
    staging = D.Staging(slab, output_dir, stage_dir)

    dseg = np.zeros(slab_img.shape[:3], np.uint8)
    rows = []
    for side in SIDES:
        ear = ears[side]
        mask = np.asanyarray(nib.load(str(ear["mask"])).dataobj) > 0
        prob = np.asanyarray(nib.load(str(ear["prob"])).dataobj, dtype=np.float32)
        dseg[mask] = DSEG_VALUE[side]
        common = {
            "side": side,
            "model_name": model_name,
            "model_sha256": model_sha256,
            "centre_mm": ear["centre_mm"],
            "localizer": localizer,
            "extra_sources": extra,
            "inference": inference,
        }
        staging.nifti(
            image_like(mask, slab_img, np.uint8),
            D.mask_sidecar(slab, **common),
            **D.TFS_MASK.entities(desc=side),
        )
        staging.nifti(
            image_like(prob, slab_img, np.float32),
            D.segmentation_sidecar(slab, **common),
            **D.TFS_PROBSEG.entities(desc=side),
        )
        if rois is not None:
            _stage_roi_outputs(staging, slab, slab_img, side, rois[side], common)
        qc = ear["qc"]
        rows.append(
            {
                "side": side,
                "volume_mm3": qc["volume_mm3"],
                "slab_volume_mm3": round(float(mask.sum() * voxel_mm3), 3),
                # components of at least 1 mm³, as counted by the multiple_components flag
                "n_components": len(significant_components(qc["component_volumes_mm3"])),
                "centre_x_mm": round(float(ear["centre_mm"][0]), 3),
                "centre_y_mm": round(float(ear["centre_mm"][1]), 3),
                "centre_z_mm": round(float(ear["centre_mm"][2]), 3),
                "localizer": localizer,
                "refinement_moved_mm": round(float(ear["moved_mm"]), 3),
                "qc_flags": flags_cell([f["name"] for f in qc["flags"]]),
                "model": model_name,
                "model_sha256": model_sha256[:12],
            }
        )
    staging.nifti(
        image_like(dseg, slab_img, np.uint8),
        D.segmentation_sidecar(
            slab,
            side=None,
            model_name=model_name,
            model_sha256=model_sha256,
            centre_mm=None,
            localizer=localizer,
            extra_sources=extra,
            inference=inference,
        ),
        **D.TFS_DSEG.entities(),
    )
    staging.tsv(rows, **D.VOLUMES.entities())
    return staging.files, rows


def _stage_roi_outputs(
    staging: D.Staging,
    slab: Path,
    slab_img: Any,
    side: str,
    files: dict[str, Path],
    common: dict[str, Any],
) -> None:
    """Stage one ear's ROI-grid image, probseg and mask (the paper's native output)."""
    kinds = (("image", D.ROI_IMAGE, np.float32), ("prob", D.ROI_PROBSEG, np.float32),
             ("mask", D.ROI_MASK, np.uint8))  # fmt: skip
    for key, kind, dtype in kinds:
        img = nib.load(str(files[key]))
        data = np.asanyarray(img.dataobj).astype(dtype)
        base = (
            D.mask_sidecar(slab, **common)
            if key == "mask"
            else D.segmentation_sidecar(slab, **common)
        )
        if key == "image":
            base = {k: v for k, v in base.items() if k in ("Sources", "SpatialReference", "Side")}
            base["Description"] = f"the slab resampled onto the {side} ear's ROI grid"
            base["SkullStripped"] = False
        sidecar = D.roi_sidecar(
            roi_affine=img.affine, roi_shape=data.shape, slab_affine=slab_img.affine, base=base
        )
        out = nib.Nifti1Image(data, img.affine)
        out.header.set_xyzt_units("mm")
        staging.nifti(out, sidecar, **kind.entities(desc=side))
