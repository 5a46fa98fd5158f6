"""Distances in millimetres on voxel grids, stable against the last bits of a voxel size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

DISTANCE_DECIMALS = 6
"""Distances are rounded to 1e-6 mm: a voxel size read from an affine is 0.2 ± 1e-8 mm, so
a distance of exactly three voxels falls just below or just above 0.6 mm by chance, and a
threshold at 0.6 mm would keep or drop a whole layer of voxels with it."""


def distance_outside(mask: np.ndarray, spacing_mm: float | Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of ``mask`` (0 inside it)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    outside = ndimage.distance_transform_edt(~(np.asarray(mask) > 0), sampling=spacing)
    return np.round(outside, DISTANCE_DECIMALS)
