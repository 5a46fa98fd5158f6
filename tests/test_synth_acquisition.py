"""Slab re-acquisition of a training ROI: geometry, contrast loss of thin tubes, slab noise."""

from __future__ import annotations

import numpy as np
import pytest

from ievnet_bids.geometry.roi import RoiGrid
from ievnet_bids.synth.acquisition import (
    MAX_TILT_DEG,
    SlabAcquisition,
    reacquire,
    sample_acquisition,
    slab_grid,
)
from ievnet_bids.synth.anatomy import random_rotation

SHAPE = (60, 50, 40)  # a small ROI at 0.2 mm keeps the tests fast


def _acq(
    voxel: float = 0.5, snr: float = np.inf, tilt: np.ndarray | None = None
) -> SlabAcquisition:
    return SlabAcquisition(
        voxel_mm=(voxel, voxel, voxel),
        rotation=np.eye(3) if tilt is None else tilt,
        phase=np.array([0.3, 0.6, 0.1]),
        snr=snr,
    )


def _ball(radius_mm: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum((idx[a] - centre[a]) ** 2 for a in range(3))) * 0.2
    return (r <= radius_mm).astype(np.float32)


def test_random_rotation_is_a_rotation_within_the_tilt() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        rot = random_rotation(rng, MAX_TILT_DEG)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(rot), 1.0)
        angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        assert angle <= MAX_TILT_DEG + 1e-6


def test_slab_grid_covers_the_roi_at_the_slab_voxel_size() -> None:
    roi = RoiGrid.centred(np.zeros(3), shape=SHAPE, spacing_mm=0.2)
    acq = _acq(tilt=random_rotation(np.random.default_rng(3), 10.0))
    slab = slab_grid(roi, acq)
    assert np.allclose(slab.spacing, 0.5)
    corners = np.array([[i, j, k] for i in (0, SHAPE[0] - 1) for j in (0, SHAPE[1] - 1)
                        for k in (0, SHAPE[2] - 1)])  # fmt: skip
    vox = slab.world_to_voxel(roi.voxel_to_world(corners))
    assert (vox >= 2).all() and (vox <= np.asarray(slab.shape) - 3).all()  # spline margin


def test_flat_image_and_large_ball_survive_without_noise() -> None:
    rng = np.random.default_rng(0)
    flat = np.full(SHAPE, 0.7, np.float32)
    assert np.allclose(reacquire(flat, _acq(), rng), 0.7, atol=1e-3)  # edges padded, no rim
    ball = _ball(3.0)
    out = reacquire(ball, _acq(tilt=random_rotation(rng, 10.0)), rng)
    # a 6 mm ball is 12 slab voxels across: its half-level volume is kept within 3 %
    assert abs((out >= 0.5).sum() / ball.sum() - 1) < 0.03


def test_thin_tube_loses_contrast_on_a_coarse_slab() -> None:
    """A 0.4 mm tube (a thin canal) keeps its peak on a 0.3 mm slab, loses it on a 0.6 mm one."""
    idx = np.indices(SHAPE).astype(float)
    r = np.hypot(idx[1] - 24.5, idx[2] - 19.5) * 0.2
    tube = (r <= 0.2).astype(np.float32)
    rng = np.random.default_rng(0)
    fine = reacquire(tube, _acq(voxel=0.3), rng)[20:40].max(axis=(1, 2)).mean()
    coarse = reacquire(tube, _acq(voxel=0.6), rng)[20:40].max(axis=(1, 2)).mean()
    assert fine > 0.6
    assert coarse < 0.5 * fine


def test_noise_lives_on_the_slab_voxels() -> None:
    """Rician noise of sd fluid/SNR per slab voxel; after the cubic return it is smooth."""
    flat = np.full(SHAPE, 1.0, np.float32)
    rng = np.random.default_rng(4)
    out = reacquire(flat, _acq(voxel=0.5, snr=20.0), rng)[5:-5, 5:-5, 5:-5]
    sd = out.std()
    assert 0.02 < sd < 0.06  # 0.05 per slab voxel, a little less between them
    a, b = out[:-1] - out.mean(), out[1:] - out.mean()
    assert (a * b).mean() / sd**2 > 0.7  # neighbouring 0.2 mm voxels share a slab voxel


def test_same_stream_same_acquisition() -> None:
    image = _ball(2.0) + 0.1
    one = reacquire(image, sample_acquisition(np.random.default_rng(9)), np.random.default_rng(1))
    two = reacquire(image, sample_acquisition(np.random.default_rng(9)), np.random.default_rng(1))
    assert np.array_equal(one, two)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_acquisitions_stay_in_their_ranges(seed: int) -> None:
    acq = sample_acquisition(np.random.default_rng(seed))
    assert all(0.35 * 0.9 <= v <= 0.65 * 1.1 for v in acq.voxel_mm)
    assert 20 <= acq.snr <= 40 and ((acq.phase >= 0) & (acq.phase < 1)).all()
