"""Re-acquire a 0.2 mm ROI on a coarser slab grid and bring it back, as the pipeline sees it.

At the participant level each ear's ROI is cut out of a 0.4–0.6 mm SPACE slab by cubic
B-spline resampling (:func:`ievnet_bids.geometry.extract.extract_roi`). The slab was sampled
from the anatomy at its own voxel size and phase, a little tilted against the ROI, and its
noise lives on the slab voxels: after upsampling that noise is smooth and strong, and thin
canals lose their contrast over short stretches. :func:`reacquire` simulates exactly that
chain on a training ROI (the synthetic test datasets build their slabs the same way, see
:func:`ievnet_bids.synth.head.write_bids_dataset`): ROI → tilted slab grid (cubic) → Rician
noise at the slab's SNR → back to the ROI grid (cubic). The labels stay those of the 0.2 mm
anatomy, which is what the network must predict from the slab.

Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ievnet_bids.geometry.extract import box_around, sub_grid
from ievnet_bids.geometry.roi import ROI_SPACING_MM, RoiGrid, resample
from ievnet_bids.synth.anatomy import random_rotation
from ievnet_bids.synth.render import rician

VOXEL_RANGE_MM = (0.35, 0.65)  # slab voxel edge (isotropic before the per-axis jitter)
AXIS_JITTER = 0.1  # each axis ×U(1 − j, 1 + j)
MAX_TILT_DEG = 10.0  # slab axes against the ROI axes
SNR_RANGE = (20.0, 40.0)  # fluid / noise sd per slab voxel, as the synthetic head slabs
FLUID_PERCENTILE = 99.5  # the ROI's fluid level
SPLINE_MARGIN = 3  # slab voxels kept around the ROI for the cubic spline back


@dataclass(frozen=True)
class SlabAcquisition:
    """One simulated slab: voxel size (mm per axis), axes (3×3, columns), phase, SNR."""

    voxel_mm: tuple[float, float, float]
    rotation: np.ndarray
    phase: np.ndarray  # slab grid offset in slab voxels, each in [0, 1)
    snr: float


def sample_acquisition(rng: np.random.Generator) -> SlabAcquisition:
    """Draw a slab: voxel 0.35–0.65 mm (±10 % per axis), tilt ≤ 10°, any phase, SNR 20–40."""
    edge = rng.uniform(*VOXEL_RANGE_MM)
    voxel = edge * rng.uniform(1 - AXIS_JITTER, 1 + AXIS_JITTER, 3)
    return SlabAcquisition(
        voxel_mm=tuple(float(v) for v in voxel),
        rotation=random_rotation(rng, MAX_TILT_DEG),
        phase=rng.uniform(0.0, 1.0, 3),
        snr=float(rng.uniform(*SNR_RANGE)),
    )


def slab_grid(roi: RoiGrid, acq: SlabAcquisition) -> RoiGrid:
    """The part of the slab ``acq`` that covers ``roi`` (+ a spline margin)."""
    voxel = np.asarray(acq.voxel_mm, dtype=float)
    half_diagonal = 0.5 * np.linalg.norm(np.asarray(roi.shape) * np.asarray(roi.spacing))
    shape = tuple(int(n) for n in np.ceil(2 * half_diagonal / voxel) + 2 * SPLINE_MARGIN + 2)
    affine = np.eye(4)
    affine[:3, :3] = acq.rotation * voxel  # columns: slab axes scaled by their voxel size
    centre = roi.centre_mm + affine[:3, :3] @ acq.phase
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    big = RoiGrid(shape, affine)
    box = box_around(roi, big, margin=SPLINE_MARGIN)
    assert box is not None  # the big grid is centred on the ROI
    return sub_grid(big, box)


def reacquire(
    image: np.ndarray,
    acq: SlabAcquisition,
    rng: np.random.Generator,
    spacing_mm: float = ROI_SPACING_MM,
) -> np.ndarray:
    """``image`` (an ROI at ``spacing_mm``) as the pipeline would extract it from slab ``acq``."""
    image = np.asarray(image, dtype=np.float32)
    roi = RoiGrid.centred(np.zeros(3), shape=image.shape, spacing_mm=spacing_mm)
    slab = slab_grid(roi, acq)
    values = resample(image, roi.affine, slab, order=3, mode="nearest")  # no empty border
    fluid = float(np.percentile(image, FLUID_PERCENTILE))
    values = rician(rng, values, fluid / acq.snr)  # as the head slabs
    return np.clip(resample(values, slab.affine, roi, order=3), 0.0, None)
