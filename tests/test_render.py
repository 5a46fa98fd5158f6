"""Rendering: contrast and acquisition behave as documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ievnet_bids.synth import labels as L
from ievnet_bids.synth.phantom import generate_phantom
from ievnet_bids.synth.render import (
    _cubic_matrix,
    _psf_matrix,
    apply_separable,
    draw_render_params,
    render_with,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return generate_phantom(5, background=True).labels


def test_psf_rows_are_normalised_and_cubic_reproduces_linear_ramps():
    psf = _psf_matrix(100, 40, 1.1)
    np.testing.assert_allclose(psf.sum(axis=1), 1.0, rtol=1e-6)
    up = _cubic_matrix(40, 100)
    ramp = np.arange(40, dtype=np.float32)
    out = up @ ramp
    # away from the clamped edges, Catmull-Rom reproduces a linear ramp exactly
    pos = (np.arange(100) + 0.5) * 40 / 100 - 0.5
    np.testing.assert_allclose(out[5:-5], pos[5:-5], atol=1e-4)


def test_acquisition_blurs_a_thin_canal_below_full_signal():
    """Partial volume: a 0.8 mm tube acquired at 0.6 mm loses peak signal; a 3 mm blob does not."""
    shape = (60, 60, 60)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * 0.2
    lab = np.full(shape, L.BONE, np.uint8)
    d_tube = np.hypot(grid[..., 0] - 4.0, grid[..., 1] - 6.0)
    lab[d_tube < 0.4] = L.LATERAL_CANAL
    lab[np.linalg.norm(grid - np.array([8.0, 8.0, 6.0]), axis=-1) < 1.5] = L.VESTIBULE
    params = draw_render_params(np.random.default_rng(0), shape, acquired_mm=0.6, snr=float("inf"))
    params = dataclasses.replace(params, texture_amplitude=0.0, bias_amplitude=0.0, gamma=1.0)
    params.means[:] = 0.0
    params.means[[L.LATERAL_CANAL, L.VESTIBULE]] = 1.0
    img = render_with(lab, params)
    img /= img[40, 40, 30]  # centre of the blob
    assert img[20, 30, 30] < 0.8  # tube centre
    low = apply_separable(np.ones(shape, np.float32), [_psf_matrix(60, 20, 1.27)] * 3)
    np.testing.assert_allclose(low, 1.0, rtol=1e-5)


def test_unacquired_rendering_is_the_psf_blur_alone():
    """acquire=False: one voxel spreads into the Gaussian of FWHM = the acquired voxel, with
    no sampling grid and no noise (the head slabs sample and add noise themselves)."""
    shape = (41, 41, 41)
    lab = np.full(shape, L.BONE, np.uint8)
    lab[20, 20, 20] = L.VESTIBULE
    params = draw_render_params(np.random.default_rng(1), shape, acquired_mm=0.5, snr=10.0)
    params = dataclasses.replace(params, texture_amplitude=0.0, bias_amplitude=0.0, gamma=1.0)
    params.means[:] = 0.0
    params.means[L.VESTIBULE] = 1.0
    img = render_with(lab, params, acquire=False).astype(float)
    profile = img[:, 20, 20] / img[:, 20, 20].sum()
    x = np.arange(41) - 20
    sigma_vox = params.acquired_mm[0] / 0.2 / 2.355
    assert abs(float((profile * x).sum())) < 1e-6  # centred: no acquisition grid offset
    assert np.sqrt(float((profile * x**2).sum())) == pytest.approx(sigma_vox, rel=0.02)
    assert img[0, 0, 0] == 0.0  # noiseless far from the voxel
    noisy = render_with(lab, params)  # acquired: sampled, Rician noise everywhere
    assert noisy[0, 0, 0] > 0.0


def test_unacquired_phantom_keeps_every_random_draw(labels):
    """generate_phantom(acquire=False): same anatomy, smoother image (no noise)."""
    acquired, raw = generate_phantom(5), generate_phantom(5, acquire=False)
    assert np.array_equal(acquired.labels, raw.labels) and acquired.meta == raw.meta
    bone = acquired.labels == L.BONE
    rough = [
        float(np.abs(np.diff(im, axis=0))[bone[1:]].mean()) for im in (acquired.image, raw.image)
    ]
    assert rough[1] < 0.7 * rough[0]  # measured 0.55: texture stays, noise goes
