"""Compose one slab's BIDS-Derivatives (masks, probsegs, dseg, volumes table) and QC flags.

The QC checks live in :mod:`ievnet_bids.qc`; each ear's QC record is computed once, on the
0.2 mm ROI grid, by the segment node. The volumes table is written from it (volume, components,
flags), plus the volume of the published slab-grid mask (``slab_volume_mm3``); the report
node writes the same record into ``..._desc-tfs_qc.json``.

Everything is written to a staging folder first; :func:`ievnet_bids.bids.derivatives.publish`
then moves the whole set into the output dataset, so a failed subject leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ievnet_bids.atomic import write_text_atomic
from ievnet_bids.bids import derivatives as D
from ievnet_bids.geometry.extract import image_like
from ievnet_bids.qc import flags_cell, significant_components
from ievnet_bids.records import EarHydrops, HydropsRecord

SIDES = ("left", "right")
DSEG_VALUE = {"left": 1, "right": 2}
HYDROPS_COLUMNS = (
    "els_volume_mm3", "els_percent", "cochlea_volume_mm3", "vestibule_volume_mm3",
    "canals_volume_mm3", "cochlea_els_percent", "vestibule_els_percent",
)  # fmt: skip
"""Volumes-table columns of the hydrops quantification (``n/a`` without a FLAIR)."""


@dataclass(frozen=True)
class HydropsOutputs:
    """The hydrops node's files for one slab (per-ear lists: left, right)."""

    record: HydropsRecord
    flair: Path
    roi_flairs: list[Path]
    roi_els: list[Path]
    roi_structures: list[Path]
    slab_els: list[Path]
    slab_structures: list[Path]
    transforms: list[Path]


def hydrops_columns(ear: EarHydrops) -> dict[str, float]:
    """The volumes-table cells of one ear (:data:`HYDROPS_COLUMNS`)."""
    parts = ear.structures
    return {
        "els_volume_mm3": ear.els_volume_mm3,
        "els_percent": ear.els_percent,
        "cochlea_volume_mm3": parts["cochlea"]["tfs_volume_mm3"],
        "vestibule_volume_mm3": parts["vestibule"]["tfs_volume_mm3"],
        "canals_volume_mm3": parts["canals"]["tfs_volume_mm3"],
        "cochlea_els_percent": parts["cochlea"]["els_percent"],
        "vestibule_els_percent": parts["vestibule"]["els_percent"],
    }


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
    hydrops: HydropsOutputs | None = None,
    template: str | None = None,
) -> tuple[dict[Path, Path], list[dict[str, Any]]]:
    """Write all derivatives of ``slab`` into ``stage_dir``.

    ``ears[side]`` holds ``prob`` and ``mask`` (native-grid NIfTI paths), ``centre_mm``,
    ``moved_mm`` and ``qc`` (the ear's QC record on the ROI grid); ``inference`` (e.g.
    ``ProbabilityThreshold``, ``FlipTTA``) goes into every sidecar. ``rois[side]`` (optional)
    holds the ROI-grid ``image``, ``prob`` and ``mask`` (the network's own 0.2 mm grid), staged
    as ``space-ROI`` derivatives with their ROI-to-slab transform. ``hydrops`` (sessions with
    a FLAIR) adds the ELS masks, the structures, the FLAIR → T2w transforms, the FLAIR on the
    ROI grids and the hydrops columns of the volumes table. ``template``: the template the
    localizer registered, named in every segmentation sidecar. Returns
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
        mask_img = nib.load(str(ear["mask"]))
        mask = np.asanyarray(mask_img.dataobj) > 0
        dseg[mask] = DSEG_VALUE[side]
        common = {
            "side": side,
            "model_name": model_name,
            "model_sha256": model_sha256,
            "centre_mm": ear["centre_mm"],
            "localizer": localizer,
            "extra_sources": extra,
            "inference": inference,
            "template": template,
        }
        _stage_on_grid(
            staging,
            Path(ear["mask"]),
            slab_img,
            np.uint8,
            D.mask_sidecar(slab, **common),
            D.TFS_MASK.entities(desc=side),
        )
        _stage_on_grid(staging, Path(ear["prob"]), slab_img, np.float32,
                       D.segmentation_sidecar(slab, **common),
                       D.TFS_PROBSEG.entities(desc=side))  # fmt: skip
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
        if hydrops is not None:
            rows[-1].update(hydrops_columns(hydrops.record.ears[side]))
            _stage_hydrops_ear(staging, slab, slab_img, side, hydrops, common)
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
            template=template,
        ),
        **D.TFS_DSEG.entities(),
    )
    if hydrops is not None:
        provenance = {"model_name": model_name, "model_sha256": model_sha256,
                      "localizer": localizer, "inference": inference, "template": template,
                      "extra_sources": (*extra, hydrops.flair)}  # fmt: skip
        _stage_structures(staging, slab, slab_img, hydrops, provenance)
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
            roi_affine=img.affine, roi_shape=img.shape[:3], slab_affine=slab_img.affine, base=base
        )
        _stage_on_grid(staging, Path(files[key]), img, dtype, sidecar, kind.entities(desc=side))


def _stage_on_grid(
    staging: D.Staging,
    path: Path,
    grid_img: Any,
    dtype: type,
    sidecar: dict[str, Any],
    entities: dict[str, Any],
) -> None:
    """Stage the image file ``path`` as a derivative on ``grid_img``'s grid with ``dtype``:
    copied as it is when it already is exactly that (:func:`image_like`'s header, compressed:
    the work-folder images are written so), else decoded and written anew."""
    img = nib.load(str(path))
    same = path.name.endswith(".nii.gz") and _is_image_like(img, grid_img, dtype)
    if same:
        staging.nifti_file(path, sidecar, **entities)
        return
    data = np.asanyarray(img.dataobj).astype(dtype)
    staging.nifti(image_like(data, grid_img, dtype), sidecar, **entities)


def _is_image_like(img: Any, grid_img: Any, dtype: type) -> bool:
    """Whether ``img`` is stored as :func:`image_like` stores ``dtype`` data on
    ``grid_img``'s grid: dtype, shape, affine, units, sform/qform codes, no scaling."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header):
        return False
    like = image_like(np.zeros((1, 1, 1), dtype), grid_img, dtype).header
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    return (
        header.get_data_dtype() == np.dtype(dtype)
        and img.shape[:3] == grid_img.shape[:3]
        and np.array_equal(img.affine, grid_img.affine)
        and header.get_xyzt_units() == like.get_xyzt_units()
        and all(int(header[k]) == int(like[k]) for k in ("sform_code", "qform_code"))
        and (np.isnan(slope) or slope in (0.0, 1.0))
        and (np.isnan(inter) or inter == 0.0)
    )


def _els_description(ear: EarHydrops) -> dict[str, Any]:
    method = ear.method
    return {
        "Description": f"endolymphatic space (ELS) inside the TFS, {ear.side} ear, from the "
        "delayed-gadolinium FLAIR registered to the slab (ievnet_bids.hydrops.els)",
        "ELSMethod": method,
        "ELSPercent": ear.els_percent,
        "FLAIRRegistration": {k: v for k, v in ear.registration.items() if k != "space_to_flair"},
    }


def _stage_hydrops_ear(
    staging: D.Staging,
    slab: Path,
    slab_img: Any,
    side: str,
    hydrops: HydropsOutputs,
    common: dict[str, Any],
) -> None:
    """Stage one ear's ELS masks (slab and ROI grid), ROI structures, ROI FLAIR, transform."""
    i = SIDES.index(side)
    ear = hydrops.record.ears[side]
    common = {**common, "extra_sources": (*common["extra_sources"], hydrops.flair)}
    sidecar = {**D.mask_sidecar(slab, **common), **_els_description(ear)}
    els = np.asanyarray(nib.load(str(hydrops.slab_els[i])).dataobj).astype(np.uint8)
    staging.nifti(image_like(els, slab_img, np.uint8), sidecar, **D.ELS_MASK.entities(desc=side))
    roi_kinds = (
        (hydrops.roi_els[i], D.ROI_ELS_MASK, np.uint8, sidecar),
        (hydrops.roi_structures[i], D.ROI_STRUCTURES_DSEG, np.uint8, _structures_sidecar(
            slab, common, f"cochlea, vestibule and canals of the {side} ear")),
        (hydrops.roi_flairs[i], D.ROI_FLAIR, np.float32, _roi_flair_sidecar(slab, common, side)),
    )  # fmt: skip
    for path, kind, dtype, base in roi_kinds:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(dtype)
        if kind is D.ROI_STRUCTURES_DSEG and side == "right":
            data = np.where(data > 0, data + 3, 0).astype(np.uint8)  # the table's right labels
        out = nib.Nifti1Image(data, img.affine)
        out.header.set_xyzt_units("mm")
        side_car = D.roi_sidecar(
            roi_affine=img.affine, roi_shape=data.shape, slab_affine=slab_img.affine, base=base
        )
        staging.nifti(out, side_car, **kind.entities(desc=side))
        if kind is D.ROI_STRUCTURES_DSEG:
            ear_labels = [row for row in D.STRUCTURE_DSEG_LABELS if row[0] == 0 or side in row[1]]
            staging.label_table(ear_labels, **kind.entities(desc=side))
    staged, dest = staging.paths(**D.FLAIR_XFM.entities(desc=side))
    write_text_atomic(Path(hydrops.transforms[i]).read_text(), staged)
    staging.add(staged, dest)


def _roi_flair_sidecar(slab: Path, common: dict[str, Any], side: str) -> dict[str, Any]:
    """The ROI-grid FLAIR's sidecar: its sources and the slab it is aligned to."""
    seg = D.segmentation_sidecar(slab, **common)
    return {
        "Description": f"the FLAIR registered onto the {side} ear's ROI grid",
        "Sources": seg["Sources"],
        "SpatialReference": seg["SpatialReference"],
        "Side": side,
        "SkullStripped": False,
    }


def _structures_sidecar(slab: Path, common: dict[str, Any], what: str) -> dict[str, Any]:
    """A segmentation sidecar describing structure labels (shared with the image's own
    ``dseg.tsv`` lookup table)."""
    base = D.segmentation_sidecar(slab, **{**common, "side": None, "centre_mm": None})
    base["Description"] = f"{what}, from a registered labelled labyrinth template (inside the TFS)"
    return base


def _stage_structures(
    staging: D.Staging,
    slab: Path,
    slab_img: Any,
    hydrops: HydropsOutputs,
    provenance: dict[str, Any],
) -> None:
    """Stage the slab-grid structure labels of both ears (``desc-structures_dseg``)."""
    dseg = np.zeros(slab_img.shape[:3], np.uint8)
    for i in range(len(SIDES)):
        labels = np.asanyarray(nib.load(str(hydrops.slab_structures[i])).dataobj).astype(np.uint8)
        dseg = np.where(labels > 0, labels + 3 * i, dseg).astype(np.uint8)
    sidecar = _structures_sidecar(slab, provenance, "cochlea, vestibule and canals of both ears")
    staging.nifti(image_like(dseg, slab_img, np.uint8), sidecar, **D.STRUCTURES_DSEG.entities())
    staging.label_table(D.STRUCTURE_DSEG_LABELS, **D.STRUCTURES_DSEG.entities())
