"""Compose one slab's BIDS-Derivatives (masks, probsegs, dseg, volumes table) and QC flags.

The QC checks live in :mod:`ievnet_bids.qc`; the volumes table carries the flags that
the native-grid mask alone decides (volume, components, refinement move, slab edge). The
report node adds the ROI-grid checks (canal loops, boundary probability) in
``..._desc-tfs_qc.json``.

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
from ievnet_bids.qc import (  # noqa: F401  (re-exported: the QC lives in ievnet_bids.qc)
    EXPECTED_VOLUME_MM3,
    MAX_REFINEMENT_MOVE_MM,
    component_volumes,
    flags_cell,
    qc_checks,
    qc_flags,
    significant_components,
)

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
) -> tuple[dict[Path, Path], list[dict[str, Any]]]:
    """Write all derivatives of ``slab`` into ``stage_dir``.

    ``ears[side]`` holds ``prob`` and ``mask`` (native-grid NIfTI paths), ``centre_mm``,
    ``moved_mm`` and ``touches_edge``; ``inference`` (e.g. ``ProbabilityThreshold``,
    ``FlipTTA``) goes into every sidecar. Returns ``({staged: destination}, volume rows)``.
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
        volume = float(mask.sum() * voxel_mm3)
        components = component_volumes(mask, voxel_mm3)
        # the same count as the multiple_components flag: specks under 1 mm³ (partial-volume
        # voxels of the mapping back onto a coarser grid) are not counted
        n_comp = len(significant_components(components))
        flags = qc_checks(
            volume_mm3=volume,
            component_volumes_mm3=components,
            moved_mm=float(ear["moved_mm"]),
            touches_edge=bool(ear["touches_edge"]),
        )
        rows.append(
            {
                "side": side,
                "volume_mm3": round(volume, 3),
                "n_components": n_comp,
                "centre_x_mm": round(float(ear["centre_mm"][0]), 3),
                "centre_y_mm": round(float(ear["centre_mm"][1]), 3),
                "centre_z_mm": round(float(ear["centre_mm"][2]), 3),
                "localizer": localizer,
                "refinement_moved_mm": round(float(ear["moved_mm"]), 3),
                "qc_flags": flags_cell([f.name for f in flags]),
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
