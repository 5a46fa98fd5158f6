"""Crop an ear ROI out of a T2 slab and map ROI probabilities back onto the slab's grid.

Everything goes through world coordinates (RAS mm) and :func:`ievnet_bids.geometry.roi.resample`,
so a ROI may be rotated relative to the slab (its axes follow the head, not the scanner). Only
the slab voxels around the ROI are touched, so each call costs a few tenths of a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from ievnet_bids.geometry.roi import ROI_SHAPE, ROI_SPACING_MM, RoiGrid, resample

SPLINE_MARGIN = 6  # slab voxels kept around the ROI so the cubic prefilter sees real context
EDGE_TOL_VOX = 1e-3


def orthonormal(matrix: np.ndarray) -> np.ndarray:
    """Nearest proper rotation (polar decomposition) of a 3×3 matrix, det = +1."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=float)[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def head_rotation_from_affine(affine: np.ndarray) -> np.ndarray:
    """Head axes (columns: left→right, posterior→anterior, inferior→superior) from an image.

    For an image planned on the head (a slab), its voxel axes, reordered and flipped to the
    closest RAS axes (:func:`nibabel.orientations.io_orientation`) and orthonormalised.
    """
    affine = np.asarray(affine, dtype=float)
    ornt = nib.orientations.io_orientation(affine)
    axes = np.zeros((3, 3))
    for voxel_axis, (world_axis, sign) in enumerate(ornt):
        col = affine[:3, voxel_axis]
        axes[:, int(world_axis)] = sign * col / np.linalg.norm(col)
    return orthonormal(axes)


def roi_grid_for(
    centre_mm: np.ndarray | tuple[float, float, float],
    head_rotation: np.ndarray | None = None,
    *,
    shape: tuple[int, int, int] = ROI_SHAPE,
    spacing_mm: float = ROI_SPACING_MM,
) -> RoiGrid:
    """The IE-Vnet ROI centred on ``centre_mm`` with axes along the head's anatomical axes.

    ``head_rotation`` (3×3, columns = head left→right, posterior→anterior, up in world; e.g.
    :attr:`TemplateTransform.rotation`) is orthonormalised; None = scanner RAS axes.
    """
    rot = None if head_rotation is None else orthonormal(head_rotation)
    return RoiGrid.centred(
        np.asarray(centre_mm, dtype=float), shape=shape, spacing_mm=spacing_mm, rotation=rot
    )


def slab_grid(slab_img: nib.spatialimages.SpatialImage) -> RoiGrid:
    """The slab's own voxel grid (3-D)."""
    return RoiGrid(tuple(int(s) for s in slab_img.shape[:3]), np.asarray(slab_img.affine, float))


def slab_data(slab_img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The slab's voxels as float32 3-D (a trailing singleton 4th axis is dropped; cached)."""
    shape = slab_img.shape
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) != 3:
        raise ValueError(f"expected a 3-D slab, got shape {shape}")
    data = slab_img.get_fdata(dtype=np.float32, caching="fill")
    return data.reshape(shape[:3])


def _roi_corners(grid: RoiGrid) -> np.ndarray:
    n = np.asarray(grid.shape) - 1
    ijk = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    return grid.voxel_to_world(ijk)


def box_around(grid: RoiGrid, target: RoiGrid, margin: int = 0) -> tuple[slice, ...] | None:
    """Voxel box of ``target`` covering ``grid``'s extent + ``margin`` voxels (None: disjoint)."""
    vox = target.world_to_voxel(_roi_corners(grid))
    lo = np.maximum(np.floor(vox.min(0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 1 + margin, target.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def index_box(idx: np.ndarray, margin: int | np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    """Box around the voxel indices ``idx`` (N×3) widened by ``margin`` voxels (per axis or
    one for all), clipped to ``shape``."""
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def sub_grid(grid: RoiGrid, box: tuple[slice, ...]) -> RoiGrid:
    """The part ``box`` of ``grid`` as a grid of its own."""
    lo = np.array([s.start for s in box], dtype=float)
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ lo + grid.affine[:3, 3]
    return RoiGrid(tuple(s.stop - s.start for s in box), affine)


def roi_touches_slab_edge(grid: RoiGrid, slab_img: nib.spatialimages.SpatialImage) -> bool:
    """True when some of the ROI lies on or beyond the slab's outer voxel centres.

    Both are boxes, so the ROI is inside iff its 8 corners are.
    """
    slab = slab_grid(slab_img)
    vox = slab.world_to_voxel(_roi_corners(grid))
    n = np.asarray(slab.shape) - 1
    return bool(np.any(vox < EDGE_TOL_VOX) or np.any(vox > n - EDGE_TOL_VOX))


def extract_roi(
    slab_img: nib.spatialimages.SpatialImage, grid: RoiGrid, order: int = 3, fill: float = 0.0
) -> np.ndarray:
    """Slab intensities on ``grid`` (float32, ``grid.shape``); ``fill`` outside the slab.

    ``order`` 3 = cubic B-spline. Use :func:`roi_touches_slab_edge` to flag a ROI that is not
    fully covered by the slab.
    """
    slab = slab_grid(slab_img)
    box = box_around(grid, slab, margin=SPLINE_MARGIN if order > 1 else 1)
    if box is None:
        return np.full(grid.shape, fill, np.float32)
    data = slab_data(slab_img)[box]
    return resample(data, sub_grid(slab, box).affine, grid, order=order, cval=fill)


def map_back(
    prob: np.ndarray, grid: RoiGrid, slab_img: nib.spatialimages.SpatialImage
) -> np.ndarray:
    """ROI probability linearly interpolated onto the slab's grid (float32, slab's 3-D shape).

    0 outside the ROI; threshold afterwards.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != tuple(grid.shape):
        raise ValueError(f"prob shape {prob.shape} does not match the ROI grid {grid.shape}")
    slab = slab_grid(slab_img)
    out = np.zeros(slab.shape, np.float32)
    box = box_around(grid, slab, margin=1)
    if box is not None:
        out[box] = resample(prob, grid.affine, sub_grid(slab, box), order=1, cval=0.0)
    return out


def image_like(
    data: np.ndarray, like: nib.spatialimages.SpatialImage, dtype: type = np.float32
) -> nib.Nifti1Image:
    """``data`` as a NIfTI image on ``like``'s grid: same affine, sform/qform codes, mm units."""
    affine = np.asarray(like.affine, dtype=float)
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    hdr = getattr(like, "header", None)
    scode = qcode = 1
    if isinstance(hdr, nib.Nifti1Header):
        scode = int(hdr["sform_code"]) or 1
        qcode = int(hdr["qform_code"]) or 1
    out.set_sform(affine, code=scode, update_affine=False)
    out.set_qform(affine, code=qcode, update_affine=False)
    out.header.set_xyzt_units("mm", "sec")
    return out
