"""Carry landmarks from one head template to another by registration (affine + SyN).

Used for a TemplateFlow template without its own landmark file: the shipped head (``fixed``,
whose landmarks are known) is registered to the other template's head (``moving``), both
block-averaged to ~:data:`SPACING_MM` and intensity-normalised as in :mod:`.register`;
rigid, affine, then a coarse SyN stage (ITK on one thread: reproducible). ANTs transforms map
fixed points to moving points, so the landmarks go through them directly
(``ants.apply_transforms_to_points`` with the forward transforms).

Uncertainty: the registration adds an error to each carried landmark, estimated (a heuristic,
not a measurement) as the larger of :data:`FLOOR_MM` and the distance the SyN stage moved the
landmark beyond the affine result: where the two heads differ in shape, the non-linear part of
the registration decides, and it is the less certain part. The floor is a quarter of the 4 mm
grid the registration works on; on a rigidly moved copy of the same head, where the answer is
known, the landmarks land within 0.3 mm (``tests/test_templateflow.py``).

Cost: about 8 s of one CPU core (ITK single-threaded; 40 + 20 SyN iterations at 8 and 4 mm),
once per template: the caller caches the result.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.geometry.extract import orthonormal
from ievnet_bids.localize.register import (
    LPS,
    ants_affine_to_matrix,
    downsample,
    itk_single_threaded,
    normalise_intensity,
    stage_args,
    to_ants,
)

SPACING_MM = 4.0
FLOOR_MM = 1.0  # the registration adds at least this (mm); see the module doc
SCALE_RANGE = (0.75, 1.33)  # affine scale factors outside: a failed registration


@dataclass(frozen=True)
class LandmarkTransfer:
    """Landmarks carried from the fixed head's world into the moving head's (RAS mm).

    ``landmarks``: through affine + SyN; ``affine``: fixed world → moving world (the affine
    part alone); ``head_axes``: the fixed head frame carried by its rotation;
    ``syn_moved_mm``: how far SyN moved each landmark beyond the affine;
    ``added_uncertainty_mm``: the registration's estimated error (module doc).
    """

    landmarks: dict[str, np.ndarray]
    affine: np.ndarray
    head_axes: np.ndarray
    scales: tuple[float, ...]
    syn_moved_mm: dict[str, float]
    added_uncertainty_mm: dict[str, float]
    stages: tuple[str, ...]
    seconds: float

    @property
    def plausible(self) -> bool:
        """False when an affine scale factor leaves :data:`SCALE_RANGE`."""
        return all(SCALE_RANGE[0] <= s <= SCALE_RANGE[1] for s in self.scales)


def transfer_landmarks(
    fixed_img: nib.spatialimages.SpatialImage,
    landmarks: dict[str, np.ndarray],
    fixed_head_axes: np.ndarray,
    moving_img: nib.spatialimages.SpatialImage,
    *,
    spacing_mm: float = SPACING_MM,
    seed: int = 1,
) -> LandmarkTransfer:
    """Register ``fixed_img`` (whose ``landmarks`` are known) to ``moving_img`` and carry the
    landmarks and the head frame ``fixed_head_axes`` (3×3, columns) into ``moving_img``'s world.
    """
    import pandas as pd

    itk_single_threaded()  # loads ANTsPy first, with ITK on one thread
    import ants
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    t0 = time.perf_counter()
    fdata, faff = downsample(fixed_img, spacing_mm)
    mdata, maff = downsample(moving_img, spacing_mm)
    fixed = to_ants(normalise_intensity(fdata), faff)
    moving = to_ants(normalise_intensity(mdata), maff)
    fs, ms = get_pointer_string(fixed), get_pointer_string(moving)
    names = list(landmarks)
    ras = np.array([landmarks[n] for n in names], dtype=float)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    stages = ("Rigid", "Affine", "SyN")
    with tempfile.TemporaryDirectory(prefix="ievnet_tpl_reg_") as tmp:
        prefix = os.path.join(tmp, "tx_")
        args = ["--dimensionality", "3", "--initial-moving-transform", f"[{fs},{ms},1]"]
        args += stage_args("Rigid", fs, ms, "100x50", "2x1", "1x0")
        args += stage_args("Affine", fs, ms, "50x20", "2x1", "1x0")
        args += stage_args("SyN", fs, ms, "40x20", "2x1", "1x0")
        args += ["--output", prefix, "--collapse-output-transforms", "1"]
        args += ["--random-seed", str(int(seed)), "--float", "1"]
        rc = get_lib_fn("antsRegistration")(process_arguments(args))
        if rc != 0:
            raise RuntimeError(f"antsRegistration failed with exit code {rc}")
        affine_file = next(Path(tmp).glob("tx_*GenericAffine.mat"), None)
        warp_file = next(Path(tmp).glob("tx_*[0-9]Warp.nii.gz"), None)
        if affine_file is None or warp_file is None:
            raise RuntimeError("antsRegistration wrote no affine transform or warp field")
        fixed_to_moving_lps = ants_affine_to_matrix(affine_file)
        points = pd.DataFrame(lps, columns=["x", "y", "z"])
        warped = ants.apply_transforms_to_points(3, points, [str(warp_file), str(affine_file)])
        moved_lps = warped[["x", "y", "z"]].to_numpy(dtype=float)
    affine = LPS @ fixed_to_moving_lps @ LPS
    moved = moved_lps * np.array([-1.0, -1.0, 1.0])
    affine_only = ras @ affine[:3, :3].T + affine[:3, 3]
    syn_moved = np.linalg.norm(moved - affine_only, axis=1)
    lin = affine[:3, :3]
    return LandmarkTransfer(
        landmarks={n: moved[i] for i, n in enumerate(names)},
        affine=affine,
        head_axes=orthonormal(lin @ np.asarray(fixed_head_axes, dtype=float)),
        scales=tuple(float(s) for s in np.linalg.svd(lin, compute_uv=False)),
        syn_moved_mm={n: float(syn_moved[i]) for i, n in enumerate(names)},
        added_uncertainty_mm={n: max(FLOOR_MM, float(syn_moved[i])) for i, n in enumerate(names)},
        stages=stages,
        seconds=time.perf_counter() - t0,
    )
