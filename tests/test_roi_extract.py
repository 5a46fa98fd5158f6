"""ROI extraction from a slab and map-back onto it (ievnet_bids.geometry.extract)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.geometry.extract import (
    extract_roi,
    head_rotation_from_affine,
    image_like,
    map_back,
    orthonormal,
    roi_grid_for,
    roi_touches_slab_edge,
)
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.synth.head import euler_rotation

SLAB_SHAPE = (140, 120, 48)  # 70 × 60 × 24 mm at 0.5 mm
BLOB_SIGMA_MM = 1.5


def _slab(rotation_deg=(4.0, -6.0, 9.0), centre=(12.0, -30.0, 5.0), blob_at=None):
    grid = RoiGrid.centred(
        centre, shape=SLAB_SHAPE, spacing_mm=0.5, rotation=euler_rotation(rotation_deg)
    )
    data = np.zeros(SLAB_SHAPE, np.float32)
    if blob_at is not None:
        xyz = grid.world_coordinates(np.float64)
        d2 = ((xyz - np.asarray(blob_at)) ** 2).sum(-1)
        data = (1000.0 * np.exp(-0.5 * d2 / BLOB_SIGMA_MM**2)).astype(np.float32)
    return nib.Nifti1Image(data, grid.affine), grid


def _centroid(values: np.ndarray, grid: RoiGrid) -> np.ndarray:
    w = np.clip(values.astype(np.float64), 0, None)
    xyz = grid.world_coordinates(np.float64)
    return (xyz * w[..., None]).sum(axis=(0, 1, 2)) / w.sum()


@pytest.mark.parametrize("roi_angles", [(0.0, 0.0, 0.0), (10.0, -15.0, 25.0), (-30.0, 5.0, -8.0)])
def test_round_trip_centroid_on_rotated_grids(roi_angles):
    blob = np.array([14.3, -28.7, 5.9])
    slab, slab_grid = _slab(blob_at=blob)
    assert np.linalg.norm(_centroid(np.asarray(slab.dataobj), slab_grid) - blob) < 0.02
    # ROI centred 2.3 mm away from the blob, rotated relative to the slab
    grid = roi_grid_for(blob + np.array([1.5, -1.0, 1.4]), euler_rotation(roi_angles))
    roi = extract_roi(slab, grid)
    assert roi.shape == grid.shape and roi.dtype == np.float32
    assert np.linalg.norm(_centroid(roi, grid) - blob) < 0.1
    assert roi.max() == pytest.approx(1000.0, rel=0.02)
    back = map_back(roi, grid, slab)
    assert back.shape == SLAB_SHAPE
    assert np.linalg.norm(_centroid(back, slab_grid) - blob) < 0.1
    assert np.abs(back - np.asarray(slab.dataobj)).max() < 30.0  # linear on a smooth blob


def test_cropped_extraction_matches_full_volume_resampling():
    blob = np.array([10.0, -31.0, 4.0])
    slab, _ = _slab(blob_at=blob)
    grid = roi_grid_for(blob, euler_rotation((5.0, 12.0, -20.0)), shape=(40, 30, 20))
    full = resample(np.asarray(slab.dataobj, np.float32), slab.affine, grid, order=3)
    np.testing.assert_allclose(extract_roi(slab, grid), full, atol=0.05)


def test_roi_partly_outside_is_flagged():
    slab, _ = _slab(rotation_deg=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0))
    # slab z covers [-11.75, 11.75] mm; a 20 mm ROI centred at z = 11.75 is half outside
    half_out = roi_grid_for((0.0, 0.0, 11.75))
    assert roi_touches_slab_edge(half_out, slab)
    assert not extract_roi(slab, half_out)[:, :, -40:].any()  # the outer half is empty
    inside = roi_grid_for((3.0, -2.0, 0.0), euler_rotation((0.0, 0.0, 20.0)))
    assert not roi_touches_slab_edge(inside, slab)
    far = roi_grid_for((500.0, 0.0, 0.0))
    assert roi_touches_slab_edge(far, slab)
    assert not extract_roi(slab, far).any()


def test_outside_voxels_are_zero():
    slab0, _ = _slab(rotation_deg=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0))
    slab = nib.Nifti1Image(np.full(SLAB_SHAPE, 7.0, np.float32), slab0.affine)
    grid = roi_grid_for((0.0, 0.0, 11.75))
    roi = extract_roi(slab, grid, order=1)
    z = grid.voxel_to_world(np.array([[0, 0, k] for k in range(grid.shape[2])]))[:, 2]
    assert np.all(roi[:, :, z > 11.76] == 0)
    assert np.allclose(roi[:, :, z < 11.7], 7.0)


def test_map_back_has_the_slab_shape_and_affine():
    slab, _ = _slab()
    grid = roi_grid_for((12.0, -30.0, 5.0), euler_rotation((0.0, 8.0, -12.0)))
    prob = np.ones(grid.shape, np.float32)
    out = map_back(prob, grid, slab)
    assert out.shape == slab.shape and out.dtype == np.float32
    img = image_like(out, slab)
    assert img.shape == slab.shape
    np.testing.assert_array_equal(img.affine, slab.affine)
    # exactly 1 on slab voxels inside the ROI's box of voxel centres, 0 elsewhere
    ijk = np.indices(slab.shape).reshape(3, -1).T
    v = grid.world_to_voxel(nib.affines.apply_affine(slab.affine, ijk))
    tol = 1e-6
    inside = np.all((v >= -tol) & (v <= np.asarray(grid.shape) - 1 + tol), axis=1)
    np.testing.assert_allclose(out.reshape(-1), inside.astype(np.float32), atol=1e-4)
    assert 0.5 * 40 * 30 * 20 < inside.sum() * 0.125 < 40 * 30 * 20
    with pytest.raises(ValueError):
        map_back(np.ones((3, 3, 3)), grid, slab)


def test_roi_grid_follows_head_axes():
    rot = euler_rotation((3.0, -7.0, 15.0))
    noisy = rot + 0.01 * np.random.default_rng(0).standard_normal((3, 3))
    grid = roi_grid_for((1.0, 2.0, 3.0), noisy)
    np.testing.assert_allclose(grid.centre_mm, [1.0, 2.0, 3.0], atol=1e-9)
    axes = grid.affine[:3, :3] / 0.2
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)
    assert np.degrees(np.arccos((np.trace(axes.T @ rot) - 1) / 2)) < 1.5
    assert grid.shape == (200, 150, 100)
    np.testing.assert_allclose(roi_grid_for((0, 0, 0)).affine[:3, :3], 0.2 * np.eye(3))


def test_head_rotation_from_permuted_flipped_affine():
    rot = euler_rotation((5.0, 0.0, -10.0))
    # voxel axes: 0 = posterior (−y), 1 = right (+x), 2 = superior, 0.5 mm
    affine = np.eye(4)
    affine[:3, 0] = -0.5 * rot[:, 1]
    affine[:3, 1] = 0.5 * rot[:, 0]
    affine[:3, 2] = 0.7 * rot[:, 2]
    np.testing.assert_allclose(head_rotation_from_affine(affine), rot, atol=1e-9)
    assert np.linalg.det(orthonormal(np.diag([-1.0, 1.0, 1.0]))) == pytest.approx(1.0)


def test_extract_ear_takes_the_roi_size_it_is_given():
    from ievnet_bids.segmentation import extract_ear

    slab, _ = _slab(rotation_deg=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0))
    ear = extract_ear(slab, "left", np.zeros(3), None, shape=(50, 40, 30), spacing_mm=0.3)
    assert ear.image.shape == ear.grid.shape == (50, 40, 30)
    np.testing.assert_allclose(ear.grid.spacing, 0.3)
