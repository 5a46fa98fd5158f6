"""Segment both ears of a slab on their ROIs, re-centre on the found labyrinth, map back.

Pure functions over files and arrays (no Nipype): the workflow's extract, segment and
map-back nodes call them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from ievnet_bids.geometry.roi import ROI_SHAPE, ROI_SPACING_MM, RoiGrid
from ievnet_bids.postprocess import CleanupParams
from ievnet_bids.records import EarResult

RECENTRE_TOLERANCE_MM = 2.0
PROB_STEP = 2.0**-16
"""Probabilities are stored on this grid (float32): the network's sigmoid is nowhere exactly
0, and its noisy low bits made a ROI ``probseg`` 11 MB compressed (1.1 MB on the grid) and
the slowest file to write; thresholds at multiples of it (0.5) select the same voxels."""


@dataclass
class EarRoi:
    """One ear's ROI: grid, image and (after segmentation) probability, mask and record."""

    side: str
    grid: RoiGrid
    image: np.ndarray
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    info: dict[str, Any] | None = None
    source: Path | None = None  # the ROI image file ``image`` was read from (saved as a copy)


def roi_image(data: np.ndarray, grid: RoiGrid) -> nib.Nifti1Image:
    """A NIfTI image on the ROI grid: its affine *is* the geometry record."""
    img = nib.Nifti1Image(np.asarray(data), grid.affine)
    img.set_sform(grid.affine, code=1)
    img.set_qform(grid.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def grid_of(img: nib.spatialimages.SpatialImage) -> RoiGrid:
    return RoiGrid(tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float))


def extract_ear(
    slab_img: nib.spatialimages.SpatialImage,
    side: str,
    centre_mm: np.ndarray,
    head_axes: np.ndarray | None,
    *,
    shape: tuple[int, int, int] = ROI_SHAPE,
    spacing_mm: float = ROI_SPACING_MM,
) -> EarRoi:
    """The ROI of one ear (``shape`` voxels of ``spacing_mm``: the model card's), oriented
    along the head's axes, cubic-resampled from the slab."""
    from ievnet_bids.geometry.extract import extract_roi, roi_grid_for

    grid = roi_grid_for(
        np.asarray(centre_mm, dtype=float), head_axes, shape=shape, spacing_mm=spacing_mm
    )
    return EarRoi(side, grid, extract_roi(slab_img, grid, order=3))


def mask_centre_mm(mask: np.ndarray, grid: RoiGrid) -> np.ndarray | None:
    """World centre of the mask's bounding box (the ear-centre convention), or None."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    return grid.voxel_to_world(((idx.min(0) + idx.max(0)) / 2.0)[None])[0]


def segment_ears(
    ears: list[EarRoi],
    segmenter: Any,
    *,
    slab_img: nib.spatialimages.SpatialImage | None = None,
    head_axes: np.ndarray | None = None,
    threshold: float = 0.5,
    cleanup: CleanupParams | None = None,
    recentre: bool = True,
) -> list[EarRoi]:
    """Segment all ears in one batch; re-centre and re-segment those whose labyrinth lies
    more than 2 mm from the ROI centre (needs ``slab_img``).

    Each ear's ``info`` records the clean-up (kept/dropped components), the final centre and
    how far re-centring moved it. ``cleanup``: the model card's clean-up parameters.
    """
    from ievnet_bids.postprocess import threshold_and_clean

    def run(batch: list[EarRoi]) -> None:
        probs = segmenter.predict_proba(np.stack([e.image for e in batch]))
        for ear, prob in zip(batch, probs, strict=True):
            mask, info = threshold_and_clean(
                prob, ear.grid.spacing, threshold, params=cleanup, image=ear.image
            )
            ear.prob, ear.mask, ear.info = prob, mask, info

    run(ears)
    for ear in ears:
        ear.info = {**(ear.info or {}), "recentred_mm": 0.0}
    if recentre and slab_img is not None:
        redo: list[tuple[int, EarRoi, float]] = []
        for i, ear in enumerate(ears):
            centre = mask_centre_mm(ear.mask, ear.grid)
            if centre is None:
                continue
            shift = float(np.linalg.norm(centre - ear.grid.centre_mm))
            if shift > RECENTRE_TOLERANCE_MM:
                # the same ROI size and spacing (the model card's), re-centred
                again = extract_ear(
                    slab_img, ear.side, centre, head_axes,
                    shape=ear.grid.shape, spacing_mm=float(min(ear.grid.spacing)),
                )  # fmt: skip
                redo.append((i, again, shift))
        if redo:
            run([moved for _, moved, _ in redo])
            for i, moved, shift in redo:
                moved.info["recentred_mm"] = shift
                ears[i] = moved
    for ear in ears:
        centre = mask_centre_mm(ear.mask, ear.grid)
        ear.info["roi_centre_mm"] = ear.grid.centre_mm.tolist()
        ear.info["labyrinth_centre_mm"] = None if centre is None else centre.tolist()
    return ears


def ear_result(
    ear: EarRoi, refinement_moved_mm: float, slab_img: nib.spatialimages.SpatialImage
) -> EarResult:
    """The typed record of a segmented ear: ``moved_mm`` = refinement + re-centring,
    ``touches_edge`` from the ear's final ROI grid (the one it was segmented on), and the QC
    record measured on that grid."""
    from ievnet_bids.geometry.extract import roi_touches_slab_edge
    from ievnet_bids.qc import ear_record

    info = dict(ear.info or {})
    recentred = info.pop("recentred_mm", 0.0)
    moved = refinement_moved_mm + recentred
    touches_edge = bool(roi_touches_slab_edge(ear.grid, slab_img))
    mask = ear.mask if ear.mask is not None else np.zeros(ear.grid.shape, np.uint8)
    return EarResult(
        side=ear.side,
        roi_centre_mm=info.pop("roi_centre_mm"),
        labyrinth_centre_mm=info.pop("labyrinth_centre_mm", None),
        recentred_mm=recentred,
        moved_mm=moved,
        roi_grid=json.loads(ear.grid.to_json()),
        touches_edge=touches_edge,
        cleanup=info,
        qc=ear_record(
            roi_mask=mask,
            roi_prob=ear.prob,
            roi_spacing=ear.grid.spacing,
            moved_mm=moved,
            touches_edge=touches_edge,
        ),
    )


def cleaned_probability(
    prob: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    *,
    image: np.ndarray | None = None,
    spacing_mm: float | Sequence[float] = 0.2,
    border_fluid_fraction: float | None = None,
) -> np.ndarray:
    """The probability restricted to the kept labyrinth (plus a one-voxel rim for its edges),
    raised to at least ``threshold`` inside the mask: voxels the clean-up added (filled
    cavities, bridges through lower probability) stay in the mask when it is mapped back.

    Rim voxels at or above ``threshold`` that the clean-up left out (the mostly-bone border
    :func:`~ievnet_bids.postprocess.trim_mostly_bone` removed) fall below it: to their
    fluid fraction in ``image`` scaled so that ``border_fluid_fraction`` reads as
    ``threshold`` (a partial-volume edge between them and the mask), or to 0 without it.
    """
    from ievnet_bids.connect import fluid_fraction

    inside = mask > 0
    keep = ndimage.binary_dilation(inside, iterations=1)
    cleaned = np.where(keep, prob, 0.0).astype(np.float32)
    np.maximum(cleaned, np.float32(threshold), out=cleaned, where=inside)
    left_out = keep & ~inside & (cleaned >= threshold)
    if left_out.any():
        below = np.nextafter(np.float32(threshold), np.float32(0.0))
        if image is not None and border_fluid_fraction:
            fraction = fluid_fraction(image, inside, spacing_mm)[left_out]
            cleaned[left_out] = np.minimum(threshold * fraction / border_fluid_fraction, below)
        else:
            cleaned[left_out] = 0.0
    return cleaned


def map_back_ear(
    prob_roi: nib.spatialimages.SpatialImage,
    mask_roi: nib.spatialimages.SpatialImage,
    slab_img: nib.spatialimages.SpatialImage,
    threshold: float = 0.5,
    *,
    image_roi: nib.spatialimages.SpatialImage | None = None,
    border_fluid_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(probability, mask) of one ear on the slab's native grid.

    The raw probability is linearly interpolated for the ``probseg``; the mask is the
    interpolated *cleaned* probability (:func:`cleaned_probability`: dropped components and
    the trimmed border removed, added voxels kept; ``image_roi``, the ROI image, and the
    card's ``border_fluid_fraction`` place the trimmed border) thresholded at ``threshold``.
    """
    from ievnet_bids.geometry.extract import map_back

    grid = grid_of(prob_roi)
    prob = np.asanyarray(prob_roi.dataobj, dtype=np.float32)
    mask = np.asanyarray(mask_roi.dataobj) > 0
    image = None if image_roi is None else np.asanyarray(image_roi.dataobj, dtype=np.float32)
    cleaned = cleaned_probability(
        prob,
        mask,
        threshold,
        image=image,
        spacing_mm=grid.spacing,
        border_fluid_fraction=border_fluid_fraction,
    )
    native_prob = map_back(prob, grid, slab_img)
    native_mask = map_back(cleaned, grid, slab_img) >= threshold
    return native_prob, native_mask.astype(np.uint8)


def stored_probability(prob: np.ndarray) -> np.ndarray:
    """``prob`` as float32 on the :data:`PROB_STEP` grid, as the probability files hold it."""
    return (np.round(np.asarray(prob, dtype=np.float32) / PROB_STEP) * PROB_STEP).astype(np.float32)


def save_ear(ear: EarRoi, folder: Path) -> dict[str, Path]:
    """Write an ear's ROI image, probability (:func:`stored_probability`) and mask as NIfTI
    on the ROI grid; an image read from a file (``ear.source``) is copied, not re-encoded."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "image": folder / f"roi_{ear.side}_image.nii.gz",
        "prob": folder / f"roi_{ear.side}_prob.nii.gz",
        "mask": folder / f"roi_{ear.side}_mask.nii.gz",
    }
    source = ear.source
    if source is not None and source.name.endswith(".nii.gz") and source != out["image"]:
        shutil.copyfile(source, out["image"])
    else:
        nib.save(roi_image(ear.image.astype(np.float32), ear.grid), out["image"])
    if ear.prob is not None:
        nib.save(roi_image(stored_probability(ear.prob), ear.grid), out["prob"])
    if ear.mask is not None:
        nib.save(roi_image(ear.mask.astype(np.uint8), ear.grid), out["mask"])
    return out
