"""ROI grids: centring, coordinate round trips, resampling by world coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from ievnet_bids.geometry.roi import ROI_SHAPE, RoiGrid, resample
from ievnet_bids.synth.anatomy import random_rotation


def test_centred_grid_has_requested_centre_and_extent():
    grid = RoiGrid.centred((12.0, -3.0, 7.5))
    np.testing.assert_allclose(grid.centre_mm, (12.0, -3.0, 7.5))
    assert grid.shape == ROI_SHAPE
    corners = grid.voxel_to_world(np.array([[0, 0, 0], np.array(ROI_SHAPE) - 1]))
    # voxel centres span (n − 1) × 0.2 mm: 39.8 × 29.8 × 19.8 mm
    np.testing.assert_allclose(corners[1] - corners[0], (39.8, 29.8, 19.8))


def test_world_voxel_round_trip_with_rotation():
    rot = random_rotation(np.random.default_rng(0), 25.0)
    grid = RoiGrid.centred((1.0, 2.0, 3.0), rotation=rot, spacing_mm=0.5, shape=(10, 12, 14))
    ijk = np.random.default_rng(1).uniform(0, 10, (50, 3))
    np.testing.assert_allclose(grid.world_to_voxel(grid.voxel_to_world(ijk)), ijk, atol=1e-9)
    np.testing.assert_allclose(grid.spacing, (0.5, 0.5, 0.5))


def test_world_coordinates_match_voxel_to_world():
    grid = RoiGrid.centred((0.0, 0.0, 0.0), shape=(4, 5, 6), spacing_mm=0.3)
    coords = grid.world_coordinates(np.float64)
    np.testing.assert_allclose(coords[3, 2, 5], grid.voxel_to_world(np.array([[3, 2, 5]]))[0])


def test_resample_onto_shifted_grid_moves_content_by_whole_voxels():
    src = RoiGrid.centred((0.0, 0.0, 0.0), shape=(20, 20, 20), spacing_mm=1.0)
    data = np.zeros(src.shape, np.float32)
    data[10, 10, 10] = 1.0
    target = RoiGrid.centred((2.0, 0.0, -1.0), shape=(20, 20, 20), spacing_mm=1.0)
    out = resample(data, src.affine, target, order=0)
    assert out[8, 10, 11] == 1.0 and out.sum() == 1.0


def test_json_round_trip(tmp_path):
    grid = RoiGrid.centred((5.0, 6.0, 7.0), rotation=random_rotation(np.random.default_rng(2), 10))
    path = tmp_path / "roi.json"
    grid.to_json(path)
    again = RoiGrid.from_json(path)
    assert again.shape == grid.shape
    np.testing.assert_allclose(again.affine, grid.affine)


@pytest.mark.parametrize("order", [1, 3])
def test_resample_identity_preserves_smooth_data(order):
    grid = RoiGrid.centred((0.0, 0.0, 0.0), shape=(16, 16, 16), spacing_mm=0.5)
    x = grid.world_coordinates(np.float64)
    data = np.sin(x[..., 0]) + x[..., 1] ** 2 * 0.1
    out = resample(data.astype(np.float32), grid.affine, grid, order=order)
    np.testing.assert_allclose(out, data, atol=1e-4)
