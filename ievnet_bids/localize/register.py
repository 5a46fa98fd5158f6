"""Coarse head registration: a full-head template (the shipped mean head by default) → the
subject's head image.

Both images are block-averaged to ~4 mm and intensity-normalised, then ``antsRegistration``
(antspyx) runs a rigid and an affine stage (two resolutions each, few iterations; an optional
coarse SyN stage is off by default). Only the affine part is returned: it carries the
template's inner-ear landmarks (±7 mm) to the subject, where :mod:`.refine` searches for the
labyrinth.

Conventions: ANTs works in LPS physical space, nibabel in RAS. Images are handed to ANTs with
``origin``/``direction`` flipped by ``F = diag(-1, -1, 1)``; the ANTs transform maps fixed
(subject) LPS points to moving (template) LPS points, so template RAS → subject RAS is
``inv(F · T_ants · F)``.

Threads: ITK fixes its thread count when ANTsPy loads, and with several threads the MI metric
sums in a varying order, so the mapped ear landmarks moved by up to 0.07 mm between runs and
thread counts (the refined ear centres by 0.1 mm, the masks by up to 2 % Dice). ANTsPy is
therefore loaded with ITK on one thread (:func:`_ants`): the registration is reproducible at
any ``--omp-nthreads``, for about 0.6 s more per subject on a 2-core laptop.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.geometry.extract import orthonormal
from ievnet_bids.templates import HeadTemplate, shipped_template

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS ↔ LPS (its own inverse)
TARGET_SPACING_MM = 4.0
SAMPLING_RATE = 0.25  # fraction of voxels sampled by the MI metric (regular grid)
THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def _ants():  # -> the ants module
    """ANTsPy, loaded with ITK on one thread when this process loads it first (module doc)."""
    if "ants" not in sys.modules:
        os.environ[THREADS_ENV] = "1"
    import ants

    return ants


def itk_single_threaded() -> bool:
    """Whether ITK runs on one thread in this process (False when ANTsPy was loaded by other
    code before with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` unset or above 1)."""
    _ants()
    return os.environ.get(THREADS_ENV) == "1"


@dataclass(frozen=True, eq=False)
class TemplateTransform:
    """Template world (RAS mm) → subject world (RAS mm).

    ``affine``: 4×4 map; ``rotation``: its rigid part (polar decomposition of the linear part,
    det +1: the template's world axes in the subject's world); ``head_axes``: the head's
    anatomical axes in the subject's world (columns: left→right ear axis, posterior→anterior,
    up; the template's own head frame, e.g. the shipped one's, yawed ≈ −4°, carried by
    ``rotation``): use it to orient ROIs; ``scales``: singular values of the linear part;
    ``seconds``: wall time of :func:`register_template`; ``stages``: ANTs stages run.
    """

    affine: np.ndarray
    rotation: np.ndarray
    head_axes: np.ndarray
    scales: tuple[float, float, float]
    seconds: float
    stages: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)

    def apply(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) template world mm → subject world mm."""
        p = np.asarray(xyz, dtype=float)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]


def downsample(
    img: nib.spatialimages.SpatialImage, target_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Block mean by an integer factor per axis to about ``target_mm``: (data float32, affine)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D head image, got shape {data.shape}")
    affine = np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    f = np.maximum(1, np.rint(target_mm / spacing)).astype(int)
    n = np.asarray(data.shape) // f
    data = data[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    data = data.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1) / 2.0  # new voxel I covers old voxels f·I … f·I + f − 1
    return data.astype(np.float32), affine @ scale


def normalise_intensity(data: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the 99th percentile of the non-zero voxels (clipped)."""
    nz = data[data > 0]
    hi = float(np.percentile(nz, 99.0)) if nz.size else 1.0
    return np.clip(data / max(hi, 1e-6), 0.0, 1.0).astype(np.float32)


def to_ants(data: np.ndarray, affine: np.ndarray):  # -> ants.ANTsImage
    """An ANTs image (LPS physical space) with the same voxels as (``data``, RAS ``affine``)."""
    ants = _ants()

    lps = LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def ants_affine_to_matrix(path: str | Path) -> np.ndarray:
    """4×4 of an ITK affine transform file (LPS, fixed → moving points)."""
    ants = _ants()

    tx = ants.read_transform(str(path))
    p = np.asarray(tx.parameters, dtype=float)
    c = np.asarray(tx.fixed_parameters, dtype=float)
    a = p[:9].reshape(3, 3)
    t = p[9:12]
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c  # y = A (x − c) + t + c
    return m


def run_affine_registration(args: list[str], folder: str | Path) -> np.ndarray:
    """Run ``antsRegistration`` with ``args`` (output prefix ``folder/tx_``); the 4×4 of the
    affine (or rigid) transform it wrote (LPS, fixed → moving points)."""
    from ants.internal import get_lib_fn, process_arguments

    rc = get_lib_fn("antsRegistration")(process_arguments(args))
    if rc != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {rc}")
    mats = sorted(Path(folder).glob("tx_*GenericAffine.mat"))
    if not mats:
        raise RuntimeError("antsRegistration wrote no affine transform")
    return ants_affine_to_matrix(mats[0])


def stage_args(
    kind: str, fixed: str, moving: str, iterations: str, shrink: str, smooth: str
) -> list[str]:
    metric = f"MI[{fixed},{moving},1,32,Regular,{SAMPLING_RATE}]"
    if kind == "SyN":
        metric = f"MI[{fixed},{moving},1,32]"
        transform = "SyN[0.2,3,0]"
    else:
        transform = f"{kind}[{0.25 if kind == 'Rigid' else 0.1}]"
    return [
        "--metric", metric,
        "--transform", transform,
        "--convergence", f"[{iterations},1e-6,10]",
        "--shrink-factors", shrink,
        "--smoothing-sigmas", f"{smooth}vox",
    ]  # fmt: skip


def register_template(
    head_img: nib.spatialimages.SpatialImage,
    *,
    template: HeadTemplate | None = None,
    target_spacing_mm: float = TARGET_SPACING_MM,
    syn: bool = False,
    seed: int = 1,
) -> TemplateTransform:
    """Affine registration of a template's head image (moving) to ``head_img`` (fixed, any
    head image).

    ``template`` defaults to the shipped mean head (:func:`~ievnet_bids.templates.
    shipped_template`); its ``head_axes`` give the returned ``head_axes``. Initialised by
    aligning the centres of mass; rigid (100×50 iterations at 2× and 1× of
    ``target_spacing_mm``) then affine (50×20). ``syn`` adds a coarse SyN stage whose warp is
    *not* part of the returned affine (it only refines the affine stage's optimum). ITK runs
    on one thread (module doc): ``info["single_threaded"]`` says whether it does in this
    process. ``info["plausible"]`` is False when a scale factor leaves [0.75, 1.33] (failed
    registration).
    """
    single_threaded = itk_single_threaded()  # loads ANTsPy first, with ITK on one thread
    from ants.internal import get_pointer_string

    t0 = time.perf_counter()
    template = template if template is not None else shipped_template()
    fdata, faff = downsample(head_img, target_spacing_mm)
    mdata, maff = downsample(nib.load(template.head_image), target_spacing_mm)
    fixed = to_ants(normalise_intensity(fdata), faff)
    moving = to_ants(normalise_intensity(mdata), maff)
    fs, ms = get_pointer_string(fixed), get_pointer_string(moving)
    stages = ["Rigid", "Affine"] + (["SyN"] if syn else [])
    with tempfile.TemporaryDirectory(prefix="ievnet_reg_") as tmp:
        prefix = os.path.join(tmp, "tx_")
        args = ["--dimensionality", "3", "--initial-moving-transform", f"[{fs},{ms},1]"]
        args += stage_args("Rigid", fs, ms, "100x50", "2x1", "1x0")
        args += stage_args("Affine", fs, ms, "50x20", "2x1", "1x0")
        if syn:
            args += stage_args("SyN", fs, ms, "20x0", "2x1", "1x0")
        args += ["--output", prefix, "--collapse-output-transforms", "1"]
        args += ["--random-seed", str(int(seed)), "--float", "1"]
        subject_to_template_lps = run_affine_registration(args, tmp)
    subject_to_template = LPS @ subject_to_template_lps @ LPS
    affine = np.linalg.inv(subject_to_template)
    lin = affine[:3, :3]
    scales = tuple(float(s) for s in np.linalg.svd(lin, compute_uv=False))
    return TemplateTransform(
        affine=affine,
        rotation=orthonormal(lin),
        head_axes=orthonormal(lin @ np.asarray(template.head_axes, dtype=float)),
        scales=scales,  # type: ignore[arg-type]
        seconds=time.perf_counter() - t0,
        stages=tuple(stages),
        info={
            "fixed_shape": list(fdata.shape),
            "moving_shape": list(mdata.shape),
            "target_spacing_mm": target_spacing_mm,
            "single_threaded": single_threaded,
            "template": template.name,
            "plausible": bool(all(0.75 <= v <= 1.33 for v in scales)),
        },
    )


def template_ear_centres(
    transform: TemplateTransform, template: HeadTemplate | None = None
) -> dict[str, np.ndarray]:
    """The ``inner_ear_left/right`` landmarks of ``template`` (default: the shipped one) in
    subject world mm."""
    lm = (template if template is not None else shipped_template()).landmark_arrays()
    return {side: transform.apply(lm[f"inner_ear_{side}"]) for side in ("left", "right")}
